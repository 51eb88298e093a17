#include "client/server_request.h"

#include "client/pool_client.h"

namespace workerpool::client {

using wire::ErrorCode;
using wire::FrameType;

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
  Answer(FrameType::kError, static_cast<uint32_t>(ErrorCode::kHandlerError), {},
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
