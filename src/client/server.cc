#include "client/server.h"

#include "client/pool_client.h"

namespace workerpool::client {

using wire::ErrorCode;
using wire::FrameType;

void Server::OnCancel(Link* link, uint64_t id) {
  auto found = link->serving.find(id);
  if (found == link->serving.end()) return;
  std::shared_ptr<ServerRequest> request = found->second;
  if (request->started) {
    request->MarkCancelled();
    return;
  }
  queue_.Remove(request);
  link->serving.erase(found);
  client_->SendOnLink(link, FrameType::kError, id,
                      static_cast<uint32_t>(ErrorCode::kCancelled), {},
                      "cancelled before it started");
}

void Server::OnRequest(Link* link, const FrameView& frame) {
  auto request = std::make_shared<ServerRequest>(
      client_, link, frame.header.id, frame.body, frame.meta,
      static_cast<int32_t>(frame.header.aux));
  request->sender_group_ = link->peer_group;
  if (!sync_handler_ && !async_handler_) {
    client_->SendOnLink(
        link, FrameType::kError, frame.header.id,
        static_cast<uint32_t>(ErrorCode::kRefused), {},
        "group " + client_->group() + " does not serve requests");
    return;
  }
  client_->CountChanged();
  if (queue_.StartsNow()) {
    // Most handlers answer before they return: the request is filed under
    // its link (for a cancel, or the link closing) only if it is still
    // open afterwards. Nothing else can reach it while the handler runs.
    Start(request);
    if (!request->answered()) {
      if (link->closed) {
        request->Detach();
      } else {
        link->serving[frame.header.id] = request;
      }
    }
  } else {
    request->OwnPayload();
    link->serving[frame.header.id] = request;
    queue_.Enqueue(request->priority(), request);
  }
}

void Server::Start(const std::shared_ptr<ServerRequest>& request) {
  request->started = true;
  queue_.Started();
  if (async_handler_) {
    request->OwnPayload();
    async_handler_(request);
    return;
  }
  HandlerResult result = sync_handler_(*request);
  if (result.ok) {
    request->Reply(result.body, {});
  } else {
    request->Fail(result.body);
  }
}

void Server::RequestDone(const ServerRequest& request, bool ok) {
  if (request.started) queue_.Finished();
  ++(ok ? served_ : served_errors_);
  client_->CountChanged();
  ReportRecycleLimit();
  // Most requests are answered inside their handler and were never filed.
  if (Link* link = request.link(); link != nullptr && !link->serving.empty()) {
    link->serving.erase(request.id());
  }
  ServeNext();
  client_->MaybeFinishStop();
}

void Server::ServeNext() {
  while (std::shared_ptr<ServerRequest> request = queue_.PopNext()) {
    Start(request);
  }
}

void Server::ReportRecycleLimit() {
  if (recycle_after_ == 0 || recycle_reported_ || !client_->pool_open()) {
    return;
  }
  if (served_ + served_errors_ < recycle_after_) return;
  recycle_reported_ = true;
  client_->SendStats();  // the Watcher starts a replacement and then drains us
}

// ---------------------------------------------------------------- answers
// In this file rather than their own: an answer ends in RequestDone, and a
// sync handler's request is answered inside Start(), so the compiler may
// inline them into each other.

void ServerRequest::Answer(FrameType type, uint32_t aux, std::string_view meta,
                           std::string_view body) {
  if (answered_) return;
  answered_ = true;
  if (link_ != nullptr) client_->SendOnLink(link_, type, id_, aux, meta, body);
  client_->server().RequestDone(*this, type == FrameType::kReply);
}

void ServerRequest::Reply(std::string_view body, std::string_view meta) {
  if (!FrameFits(meta, body)) {
    Answer(FrameType::kError, static_cast<uint32_t>(ErrorCode::kTooLarge), {},
           "reply of " + std::to_string(body.size()) +
               " bytes is over the frame limit");
    return;
  }
  Answer(FrameType::kReply, 0, meta, body);
}

void ServerRequest::Fail(std::string_view message) {
  Fail(message, ErrorCode::kHandlerError);
}

void ServerRequest::Fail(std::string_view message, ErrorCode code) {
  Answer(FrameType::kError, static_cast<uint32_t>(code), {},
         message.substr(0, 64 * 1024));
}

void ServerRequest::SendProgress(double fraction, std::string_view text) {
  if (answered_ || link_ == nullptr) return;
  if (!(fraction >= 0)) fraction = 0;  // also catches NaN
  if (fraction > 1) fraction = 1;
  client_->SendOnLink(link_, FrameType::kProgress, id_,
                      static_cast<uint32_t>(fraction * wire::kProgressScale),
                      {}, text.substr(0, 4096));
}

}  // namespace workerpool::client
