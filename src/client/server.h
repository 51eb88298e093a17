// The serving side of a process: the requests that arrive on the links
// where a peer sends to us (role "server"), the application's handler, and
// the queue in front of it (serve_queue.h: max_inflight, priorities,
// cancels). Answers go back through the client's SendOnLink; counts and
// the recycle limit (config's max_requests) are reported through the
// client's stats.
//
// Threading: the client's loop thread; handlers run on it.
#pragma once

#include <cstdint>
#include <memory>

#include "client/link.h"
#include "client/serve_queue.h"
#include "client/server_request.h"
#include "core/frame_codec.h"
#include "workerpool/client.h"

namespace workerpool::client {

class Client;

class Server {
 public:
  explicit Server(Client* client) : client_(client) {}

  void Serve(PoolClient::SyncHandler handler) {
    sync_handler_ = std::move(handler);
    async_handler_ = nullptr;
  }
  void Serve(PoolClient::AsyncHandler handler) {
    async_handler_ = std::move(handler);
    sync_handler_ = nullptr;
  }

  // Our group's limits (config): requests handled at once, and after how
  // many answers the Watcher recycles this process (0: never).
  void SetLimits(int max_inflight, std::uint64_t max_requests) {
    queue_.SetLimit(max_inflight);
    recycle_after_ = max_requests;
  }
  // Sends the stats at once when the recycle limit was reached (the
  // Watcher then starts a replacement and drains us), once.
  void ReportRecycleLimit();

  // A frame on LINK, where we serve: a request or a cancel (inline: the
  // request's path stays one call from the link's read).
  void OnFrame(Link* link, const FrameView& frame) {
    if (frame.header.type == wire::FrameType::kRequest) {
      OnRequest(link, frame);
    } else if (frame.header.type == wire::FrameType::kCancel) {
      OnCancel(link, frame.header.id);
    }
  }
  // REQUEST was answered (OK: with a reply, not an error).
  void RequestDone(const ServerRequest& request, bool ok);
  // Starts waiting requests while handler slots are free.
  void ServeNext();

  // LINK is gone: its requests' answers have nowhere to go.
  void DetachLink(Link* link) {
    for (auto& [id, request] : link->serving) request->Detach();
  }
  // LINK closes: its waiting requests are dropped, and it keeps none.
  void DropLink(Link* link) {
    queue_.DropDetached();
    link->serving.clear();
  }

  // Requests handed to the handler and not answered yet.
  int serving() const { return queue_.serving(); }
  void FillStats(ClientStats* stats) const {
    stats->served = served_;
    stats->served_errors = served_errors_;
    stats->serving =
        static_cast<std::uint64_t>(queue_.serving()) + queue_.waiting();
  }

 private:
  void OnRequest(Link* link, const FrameView& frame);
  void OnCancel(Link* link, std::uint64_t id);
  void Start(const std::shared_ptr<ServerRequest>& request);

  Client* client_;
  PoolClient::SyncHandler sync_handler_;
  PoolClient::AsyncHandler async_handler_;
  ServeQueue<ServerRequest> queue_;
  std::uint64_t recycle_after_ = 0;
  bool recycle_reported_ = false;
  std::uint64_t served_ = 0;
  std::uint64_t served_errors_ = 0;
};

}  // namespace workerpool::client
