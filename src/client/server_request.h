// A request this process serves: the IncomingRequest a handler sees
// (include/workerpool/client.h). It answers on the link it came from, at
// most once, and tells the server when it is answered.
//
// Its payload is borrowed from the link's read buffer until OwnPayload():
// a sync handler reads a request where it arrived; a request that waits,
// or goes to an async handler, copies it first. Threading: the client's
// loop thread (an async handler answers from the loop too). Lifetime:
// shared; the link that brought it keeps it while it may still be
// cancelled, the async handler as long as it likes. Detach() cuts it from
// its link when the link goes away; an answer then goes nowhere. Its
// methods are defined in server.cc, next to the server they answer to.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "workerpool/client.h"
#include "workerpool/wire.h"

namespace workerpool::client {

class Client;
struct Link;

class ServerRequest : public IncomingRequest,
                      public std::enable_shared_from_this<ServerRequest> {
 public:
  // Borrows BODY and META (views into the read buffer) until OwnPayload().
  ServerRequest(Client* client, Link* link, std::uint64_t id,
                std::string_view body, std::string_view meta,
                std::int32_t priority)
      : client_(client),
        link_(link),
        id_(id),
        body_(body),
        meta_(meta),
        priority_(priority) {}
  // Once owned, the views point into the object itself.
  ServerRequest(const ServerRequest&) = delete;
  ServerRequest& operator=(const ServerRequest&) = delete;

  // Copies the payload into this object: before an async handler sees the
  // request (it may keep it, and views of its bytes, past this read), and
  // for a request that waits in the queue.
  void OwnPayload() {
    if (owns_payload_) return;
    owns_payload_ = true;
    // A small request lives inside this object.
    char* data = inline_payload_;
    if (meta_.size() + body_.size() > sizeof(inline_payload_)) {
      heap_payload_ =
          std::make_unique_for_overwrite<char[]>(meta_.size() + body_.size());
      data = heap_payload_.get();
    }
    if (!meta_.empty()) std::memcpy(data, meta_.data(), meta_.size());
    if (!body_.empty()) {
      std::memcpy(data + meta_.size(), body_.data(), body_.size());
    }
    meta_ = std::string_view(data, meta_.size());
    body_ = std::string_view(data + meta_.size(), body_.size());
  }

  std::uint64_t id() const override { return id_; }
  std::string_view body() const override { return body_; }
  std::string_view meta() const override { return meta_; }
  std::int32_t priority() const override { return priority_; }
  const std::string& sender_group() const override { return sender_group_; }
  void Reply(std::string_view body, std::string_view meta) override;
  void Fail(std::string_view message) override;
  void Fail(std::string_view message, wire::ErrorCode code) override;
  void SendProgress(double fraction, std::string_view text) override;
  bool cancelled() const override { return cancelled_; }
  void OnCancel(std::function<void()> callback) override {
    on_cancel_ = std::move(callback);
  }

  void MarkCancelled() {
    cancelled_ = true;
    if (on_cancel_) on_cancel_();
  }
  void Detach() { link_ = nullptr; }
  bool detached() const { return link_ == nullptr; }
  Link* link() const { return link_; }
  bool answered() const { return answered_; }
  bool started = false;  // handed to the handler
  std::string sender_group_;

 private:
  void Answer(wire::FrameType type, std::uint32_t aux, std::string_view meta,
              std::string_view body);
  Client* client_;
  Link* link_;
  std::uint64_t id_;
  // Into the read buffer, or (owns_payload_) inline_payload_/heap_payload_.
  std::string_view body_;
  std::string_view meta_;
  std::int32_t priority_;
  bool owns_payload_ = false;
  bool cancelled_ = false;
  bool answered_ = false;
  std::function<void()> on_cancel_;
  std::unique_ptr<char[]> heap_payload_;
  char inline_payload_[192];
};

}  // namespace workerpool::client
