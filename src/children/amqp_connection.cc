#include "children/amqp_connection.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/units.h"
#include "version.h"

namespace workerpool {
namespace {

using Clock = std::chrono::steady_clock;
using amqp::Bytes;
using amqp::DescribeReply;
using amqp::RpcError;
using std::chrono::milliseconds;

constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
constexpr auto kRpcTimeout = std::chrono::seconds(15);

// What the session handles, told to RabbitMQ at login: without
// consumer_cancel_notify RabbitMQ ends a consumer (its queue deleted, its
// node gone) without a word, and without connection.blocked it blocks the
// connection without saying so.
AmqpTable ClientProperties(const std::string& connection_name) {
  AmqpTable capabilities = {
      {"consumer_cancel_notify", AmqpValue::Bool(true)},
      {"connection.blocked", AmqpValue::Bool(true)},
      {"publisher_confirms", AmqpValue::Bool(true)},
      {"basic.nack", AmqpValue::Bool(true)},
      {"authentication_failure_close", AmqpValue::Bool(true)},
  };
  AmqpValue table;
  table.kind = 'F';
  table.table = std::move(capabilities);
  AmqpTable properties = {
      {"product", AmqpValue::String("workerpool rabbitmq-service")},
      {"version", AmqpValue::String(WORKERPOOL_VERSION)},
      {"capabilities", std::move(table)},
  };
  if (!connection_name.empty()) {
    properties.push_back(
        {"connection_name", AmqpValue::String(connection_name)});
  }
  return properties;
}

timeval ToTimeval(milliseconds ms) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

}  // namespace

Result<int> ConnectTcp(const std::string& host, int port, milliseconds timeout,
                       int wake_fd,
                       const std::function<bool()>& stop_requested) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0) {
    return Status::Error("cannot resolve host '" + host +
                         "': " + gai_strerror(rc));
  }
  const auto deadline = Clock::now() + timeout;
  std::string last = "no address";
  int result = -1;
  for (addrinfo* ai = found; ai != nullptr && result < 0; ai = ai->ai_next) {
    int fd =
        socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last = std::string("socket: ") + std::strerror(errno);
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      result = fd;
      break;
    }
    if (errno != EINPROGRESS) {
      last = std::strerror(errno);
      close(fd);
      continue;
    }
    bool done = false;
    while (!done) {
      auto left =
          std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        last = "timed out after " + FormatDuration(timeout);
        break;
      }
      pollfd fds[2] = {{fd, POLLOUT, 0}, {wake_fd, POLLIN, 0}};
      int n = poll(fds, 2, static_cast<int>(left.count()));
      if (n < 0 && errno != EINTR) {
        last = std::string("poll: ") + std::strerror(errno);
        break;
      }
      if (n > 0 && (fds[1].revents & POLLIN) && stop_requested()) {
        last = "stopping";
        break;
      }
      if (n > 0 && fds[0].revents != 0) {
        int so_error = 0;
        socklen_t len = sizeof(so_error);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
        if (so_error == 0) {
          result = fd;
        } else {
          last = std::strerror(so_error);
        }
        done = true;
      }
    }
    if (result != fd) close(fd);
  }
  freeaddrinfo(found);
  if (result < 0) {
    return Status::Error("cannot connect to " + host + ":" + service + ": " +
                         last);
  }
  int one = 1;
  setsockopt(result, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(result, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  return result;
}

AmqpConnection::AmqpConnection(const AmqpServiceConfig& config)
    : config_(config) {}

AmqpConnection::~AmqpConnection() { Drop(false); }

Status AmqpConnection::Open(int wake_fd,
                            const std::function<bool()>& stop_requested) {
  conn_ = amqp_new_connection();
  if (conn_ == nullptr) {
    return Status::Error("out of memory creating a connection");
  }
  Status status = OpenSocket(wake_fd, stop_requested);
  if (status.ok()) status = SetUp();
  if (!status.ok()) Drop(false);
  return status;
}

Status AmqpConnection::OpenSocket(int wake_fd,
                                  const std::function<bool()>& stop_requested) {
  const AmqpUrl& url = config_.url;
  if (url.tls) {
    amqp_socket_t* socket = amqp_ssl_socket_new(conn_);
    if (socket == nullptr) return Status::Error("cannot create a TLS socket");
    timeval tv = ToTimeval(config_.connect_timeout);
    int rc = amqp_socket_open_noblock(socket, url.host.c_str(), url.port, &tv);
    if (rc != AMQP_STATUS_OK) {
      return Status::Error("cannot connect to " + url.host + ":" +
                           std::to_string(url.port) +
                           " (TLS): " + amqp_error_string2(rc));
    }
    return Status::Ok();
  }
  Result<int> fd = ConnectTcp(url.host, url.port, config_.connect_timeout,
                              wake_fd, stop_requested);
  if (!fd.ok()) return fd.status();
  amqp_socket_t* socket = amqp_tcp_socket_new(conn_);
  if (socket == nullptr) {
    close(*fd);
    return Status::Error("cannot create a socket object");
  }
  amqp_tcp_socket_set_sockfd(socket, *fd);
  return Status::Ok();
}

// The login, then the channels and their modes.
Status AmqpConnection::SetUp() {
  const AmqpUrl& url = config_.url;
  timeval handshake = ToTimeval(kHandshakeTimeout);
  amqp_set_handshake_timeout(conn_, &handshake);
  amqp_pool_t pool;
  init_amqp_pool(&pool, 1024);
  amqp_table_t properties =
      amqp::ToAmqp(ClientProperties(config_.connection_name), &pool);
  amqp_rpc_reply_t login = amqp_login_with_properties(
      conn_, url.vhost.c_str(), 0, kAmqpFrameMax, config_.heartbeat_s,
      &properties, AMQP_SASL_METHOD_PLAIN, url.user.c_str(),
      url.password.c_str());
  empty_amqp_pool(&pool);
  if (login.reply_type != AMQP_RESPONSE_NORMAL) {
    return Status::Error(DescribeLoginFailure(DescribeReply(login)));
  }
  timeval rpc = ToTimeval(kRpcTimeout);
  amqp_set_rpc_timeout(conn_, &rpc);
  heartbeat_ = amqp_get_heartbeat(conn_);

  if (Status s = OpenChannel(kAmqpConsumeChannel); !s.ok()) return s;
  if (Status s = OpenChannel(kAmqpDeclareChannel); !s.ok()) return s;
  declare_channel_open_ = true;
  amqp_confirm_select(conn_, kAmqpConsumeChannel);
  if (Status s = RpcOk("confirm.select"); !s.ok()) return s;
  amqp_basic_qos(conn_, kAmqpConsumeChannel, 0,
                 static_cast<uint16_t>(config_.prefetch), 0);
  return RpcOk("basic.qos");
}

std::string AmqpConnection::DescribeLoginFailure(const RpcError& why) const {
  const AmqpUrl& url = config_.url;
  std::string where = url.Describe() + " as '" + url.user + "'";
  if (why.code == 403 || why.text.find("ACCESS_REFUSED") == 0) {
    return "login to " + where + " refused: " + why.text +
           " (check the user and password in rabbitmq.url, and that the "
           "user may use this vhost)";
  }
  if (why.code == 530 || why.text.find("NOT_ALLOWED") == 0) {
    return "cannot open vhost '" + url.vhost + "' on " + where + ": " +
           why.text +
           " (no path in rabbitmq.url means the default vhost '/'; a "
           "trailing '/' alone means the empty vhost '')";
  }
  if (!why.connection_closed) {
    return "login to " + where + " failed: " + why.text +
           " (RabbitMQ closed the connection during the handshake: wrong "
           "user or password, an unknown vhost, or not a RabbitMQ port?)";
  }
  return "login to " + where + " failed: " + why.text;
}

Status AmqpConnection::RpcOk(const char* what) {
  amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn_);
  if (reply.reply_type == AMQP_RESPONSE_NORMAL) return Status::Ok();
  return Status::Error(std::string(what) +
                       " failed: " + DescribeReply(reply).text);
}

Status AmqpConnection::OpenChannel(amqp_channel_t channel) {
  amqp_channel_open(conn_, channel);
  return RpcOk("channel.open");
}

Status AmqpConnection::AnswerConnectionClose(
    const amqp_connection_close_t& close) {
  Status closed = Status::Error("RabbitMQ closed the connection: " +
                                amqp::Text(close.reply_text));
  amqp_connection_close_ok_t close_ok;
  close_ok.dummy = 0;
  amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &close_ok);
  return closed;
}

Status AmqpConnection::ReopenDeclareChannel() {
  amqp_channel_close_ok_t close_ok;
  close_ok.dummy = 0;
  if (amqp_send_method(conn_, kAmqpDeclareChannel, AMQP_CHANNEL_CLOSE_OK_METHOD,
                       &close_ok) != AMQP_STATUS_OK) {
    return Status::Error("cannot answer channel.close");
  }
  declare_channel_open_ = false;
  if (Status s = OpenChannel(kAmqpDeclareChannel); !s.ok()) return s;
  declare_channel_open_ = true;
  return Status::Ok();
}

Result<AmqpQueueCheck> AmqpConnection::DeclareQueue(const std::string& queue,
                                                    bool create,
                                                    const AmqpTable& arguments,
                                                    bool strict_arguments,
                                                    const char* key) {
  if (!declare_channel_open_) {
    if (Status s = OpenChannel(kAmqpDeclareChannel); !s.ok()) return s;
    declare_channel_open_ = true;
  }
  if (create) {
    amqp_pool_t pool;
    init_amqp_pool(&pool, 1024);
    amqp_queue_declare_ok_t* ok =
        amqp_queue_declare(conn_, kAmqpDeclareChannel, Bytes(queue), 0, 1, 0, 0,
                           amqp::ToAmqp(arguments, &pool));
    empty_amqp_pool(&pool);
    if (ok != nullptr) return AmqpQueueCheck{};
    RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
    if (!why.channel_closed || why.code != 406) {
      return Status::Error("cannot declare queue '" + queue + "' (" + key +
                           ") on " + config_.url.Describe() + ": " + why.text);
    }
    // 406 PRECONDITION_FAILED: it exists, declared differently.
    if (Status s = ReopenDeclareChannel(); !s.ok()) return s;
    if (strict_arguments) {
      return AmqpQueueCheck{
          "queue '" + queue + "' exists on " + config_.url.Describe() +
          " declared otherwise than the group's rabbitmq section asks (" +
          why.text +
          "); delete it (its messages with it) or move them, or change "
          "queue_type/delivery_limit/dead_letter_queue to match it"};
    }
  }
  amqp_queue_declare_ok_t* ok = amqp_queue_declare(
      conn_, kAmqpDeclareChannel, Bytes(queue), 1, 0, 0, 0, amqp_empty_table);
  if (ok != nullptr) return AmqpQueueCheck{};
  RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
  if (why.channel_closed && why.code == 404) {
    if (Status s = ReopenDeclareChannel(); !s.ok()) return s;
    return AmqpQueueCheck{
        "queue '" + queue + "' does not exist on " + config_.url.Describe() +
        " (" + why.text +
        "); create it, or set declare: true in the group's rabbitmq section"};
  }
  return Status::Error("cannot check queue '" + queue + "' on " +
                       config_.url.Describe() + ": " + why.text);
}

Result<std::string> AmqpConnection::Consume(const std::string& queue) {
  amqp_basic_consume_ok_t* ok =
      amqp_basic_consume(conn_, kAmqpConsumeChannel, Bytes(queue),
                         amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  if (ok == nullptr) {
    RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
    return Status::Error("cannot consume queue '" + queue + "': " + why.text);
  }
  return amqp::Text(ok->consumer_tag);
}

Status AmqpConnection::Cancel(const std::string& consumer_tag) {
  amqp_basic_cancel(conn_, kAmqpConsumeChannel, Bytes(consumer_tag));
  return RpcOk("basic.cancel");
}

Result<std::optional<AmqpQueueDepth>> AmqpConnection::PollQueue(
    const std::string& queue, std::string* gone) {
  if (!declare_channel_open_) {
    if (Status s = OpenChannel(kAmqpDeclareChannel); !s.ok()) return s;
    declare_channel_open_ = true;
  }
  amqp_queue_declare_ok_t* ok = amqp_queue_declare(
      conn_, kAmqpDeclareChannel, Bytes(queue), 1, 0, 0, 0, amqp_empty_table);
  if (ok == nullptr) {
    RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
    if (!why.channel_closed) {
      return Status::Error("queue.declare (passive) of '" + queue +
                           "' failed: " + why.text);
    }
    *gone = why.text;
    if (Status s = ReopenDeclareChannel(); !s.ok()) return s;
    return std::optional<AmqpQueueDepth>();
  }
  AmqpQueueDepth depth;
  depth.messages = ok->message_count;
  depth.consumers = ok->consumer_count;
  return std::optional<AmqpQueueDepth>(depth);
}

void AmqpConnection::Close(bool shut_down_socket) {
  if (conn_ == nullptr) return;
  amqp_channel_close(conn_, kAmqpConsumeChannel, AMQP_REPLY_SUCCESS);
  if (declare_channel_open_) {
    amqp_channel_close(conn_, kAmqpDeclareChannel, AMQP_REPLY_SUCCESS);
  }
  amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
  Drop(shut_down_socket);
}

void AmqpConnection::Drop(bool shut_down_socket) {
  if (conn_ != nullptr) {
    const int fd = amqp_get_sockfd(conn_);
    if (shut_down_socket && fd >= 0) shutdown(fd, SHUT_RDWR);
    amqp_destroy_connection(conn_);
    conn_ = nullptr;
  }
  declare_channel_open_ = false;
}

Result<AmqpRead> ReadWithoutWaiting(amqp_connection_state_t conn,
                                    amqp_envelope_t* envelope,
                                    amqp_frame_t* frame) {
  amqp_maybe_release_buffers(conn);
  timeval zero = {0, 0};
  amqp_rpc_reply_t reply = amqp_consume_message(conn, envelope, &zero, 0);
  if (reply.reply_type == AMQP_RESPONSE_NORMAL) return AmqpRead::kDelivery;
  if (reply.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION) {
    return Status::Error(DescribeReply(reply).text);
  }
  if (reply.library_error == AMQP_STATUS_TIMEOUT) return AmqpRead::kNothing;
  if (reply.library_error != AMQP_STATUS_UNEXPECTED_STATE) {
    return Status::Error(amqp_error_string2(reply.library_error));
  }
  // Not a delivery: the frame librabbitmq stopped at.
  int rc = amqp_simple_wait_frame_noblock(conn, frame, &zero);
  if (rc == AMQP_STATUS_TIMEOUT) return AmqpRead::kNothing;
  if (rc != AMQP_STATUS_OK) return Status::Error(amqp_error_string2(rc));
  return AmqpRead::kFrame;
}

}  // namespace workerpool
