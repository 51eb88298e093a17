// Setting up and taking down one connection of rabbitmq-service to
// RabbitMQ: the socket (plain TCP, connected here so that neither the DNS
// lookup nor the connect outlasts the connect timeout or a shutdown; or TLS
// through librabbitmq), the login, and the service's two channels, with the
// declares and depth polls that run on the second one. The reads, acks and
// publishes of a live connection are the session's (children/amqp_session.h),
// through state().
//
// Everything here blocks (up to the handshake or RPC timeout): it runs on
// the AMQP thread, or under its connection lock.
#pragma once

#include <amqp.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "children/amqp_convert.h"
#include "core/amqp_service_config.h"
#include "core/status.h"

namespace workerpool {

// The largest frame this side accepts (frame_max at login); librabbitmq
// reads the socket in buffers of this size.
constexpr int kAmqpFrameMax = 131072;
// Consuming, acking and publishing: publisher confirms on, the prefetch set.
constexpr amqp_channel_t kAmqpConsumeChannel = 1;
// Declares and depth polls. RabbitMQ closes the channel of a failed declare
// (404, 406); on a channel of their own that does not end the consumers.
constexpr amqp_channel_t kAmqpDeclareChannel = 2;

// What one ReadWithoutWaiting found.
enum class AmqpRead {
  kNothing,   // nothing waiting on the socket
  kDelivery,  // *ENVELOPE holds a message; the caller destroys it
  kFrame,     // *FRAME holds another frame (a confirm, a cancel, a close...)
};

// Reads one delivery or one other frame from CONN if one is waiting,
// without blocking; an error when the connection failed. Both the consumer
// session and the outbox's publisher read their connection this way.
Result<AmqpRead> ReadWithoutWaiting(amqp_connection_state_t conn,
                                    amqp_envelope_t* envelope,
                                    amqp_frame_t* frame);

// Connects to HOST:PORT without blocking past TIMEOUT; gives up early when
// STOP_REQUESTED says so (asked whenever WAKE_FD is readable, which this
// does not drain). Returns a non-blocking socket with TCP_NODELAY and
// SO_KEEPALIVE, which the caller owns.
Result<int> ConnectTcp(const std::string& host, int port,
                       std::chrono::milliseconds timeout, int wake_fd,
                       const std::function<bool()>& stop_requested);

// What a declare found when the connection is still fine: nothing wrong, or
// the queue's own problem, described for the log.
struct AmqpQueueCheck {
  std::string problem;  // empty: the queue is there, as asked
  bool ok() const { return problem.empty(); }
};

struct AmqpQueueDepth {
  long messages = 0;   // ready to deliver
  long consumers = 0;  // on the queue, ours included
};

// One connection at a time: Open(), use, then Close() or Drop(); Open()
// again for the next one. Not thread-safe: the owner serializes (the
// session's connection lock).
class AmqpConnection {
 public:
  // CONFIG (URL, timeouts, heartbeat, prefetch, connection name) must
  // outlive this.
  explicit AmqpConnection(const AmqpServiceConfig& config);
  ~AmqpConnection();  // Drop(false)
  AmqpConnection(const AmqpConnection&) = delete;
  AmqpConnection& operator=(const AmqpConnection&) = delete;

  // Connects (WAKE_FD, STOP_REQUESTED: see ConnectTcp; TLS connects are not
  // interrupted), logs in (with client properties that name the connection
  // and advertise the capabilities the session handles: consumer cancel
  // notifications, connection.blocked, publisher confirms, basic.nack, and
  // a connection.close on a failed authentication), opens both channels,
  // turns publisher confirms on and sets the prefetch. On an error nothing is
  // left open; the message names the broker and what failed (a refused login
  // says what to check). REQUIRES: !is_open().
  Status Open(int wake_fd, const std::function<bool()>& stop_requested);

  // Declares QUEUE durable with ARGUMENTS when CREATE, else checks that it
  // exists (passive). KEY names the setting the queue comes from, for the
  // error. An error: the connection is unusable. A problem: the queue's
  // own, described (it does not exist; or, when
  // STRICT_ARGUMENTS, it exists declared otherwise), the connection is
  // fine. Without STRICT_ARGUMENTS a queue that exists with other arguments
  // (e.g. a quorum queue, or one with its own x-dead-letter-exchange) is
  // used as it is.
  Result<AmqpQueueCheck> DeclareQueue(const std::string& queue, bool create,
                                      const AmqpTable& arguments,
                                      bool strict_arguments, const char* key);
  // basic.consume of QUEUE on the consume channel: the consumer tag. An
  // error leaves the consume channel closed: the connection is unusable.
  Result<std::string> Consume(const std::string& queue);
  // basic.cancel of consumer CONSUMER_TAG.
  Status Cancel(const std::string& consumer_tag);
  // The figures of QUEUE (a passive queue.declare on the declare channel,
  // opened first if it is closed); or, when RabbitMQ refused it on the
  // declare channel (the queue is gone), its reply text in *GONE and the
  // channel reopened. An error when the connection is unusable.
  Result<std::optional<AmqpQueueDepth>> PollQueue(const std::string& queue,
                                                  std::string* gone);
  // After RabbitMQ closed the declare channel: answers close-ok and opens it
  // again. An error when the connection is unusable.
  Status ReopenDeclareChannel();
  // RabbitMQ sent connection.close (CLOSE is its decoded method): answers
  // close-ok, as AMQP asks of the peer, and returns the error that ends the
  // connection, with RabbitMQ's reason.
  Status AnswerConnectionClose(const amqp_connection_close_t& close);

  // Closes both channels and the connection politely, then Drop().
  void Close(bool shut_down_socket);
  // Destroys the connection now (no-op when none is open). SHUT_DOWN_SOCKET
  // shutdown(2)s the socket first: that ends the TCP connection also for a
  // dup of its descriptor held elsewhere (the loop thread's watch), which
  // would otherwise keep it open, and RabbitMQ holding our unacked
  // deliveries. Plain TCP only: the TLS layer still writes its close on
  // destroy.
  void Drop(bool shut_down_socket);

  bool is_open() const { return conn_ != nullptr; }
  // librabbitmq's connection, for the reads, acks and publishes of the
  // session. REQUIRES: is_open().
  amqp_connection_state_t state() const { return conn_; }
  // Seconds, as negotiated at login; 0: none.
  int heartbeat() const { return heartbeat_; }

 private:
  Status OpenSocket(int wake_fd, const std::function<bool()>& stop_requested);
  Status SetUp();
  Status RpcOk(const char* what);
  Status OpenChannel(amqp_channel_t channel);
  std::string DescribeLoginFailure(const amqp::RpcError& why) const;

  const AmqpServiceConfig& config_;
  amqp_connection_state_t conn_ = nullptr;
  bool declare_channel_open_ = false;
  int heartbeat_ = 0;
};

}  // namespace workerpool
