#include "children/amqp_session.h"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/amqp_frame_scan.h"
#include "core/amqp_retry.h"

namespace workerpool {

void AmqpLog(const std::string& line) {
  // The syslog prefix sets the level the Watcher logs the line at, so that
  // `log.level: warn` still shows the broker's errors.
  const char* priority = line.starts_with("error:")     ? "<3>"
                         : line.starts_with("warning:") ? "<4>"
                                                        : "";
  std::string text = priority + ("rabbitmq-service: " + line + "\n");
  const char* data = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    ssize_t n = write(STDERR_FILENO, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    left -= static_cast<std::size_t>(n);
  }
}

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr amqp_channel_t kConsumeChannel = 1;  // consume, ack, publish
constexpr amqp_channel_t kDeclareChannel = 2;  // declares, depth polls
constexpr int kFrameMax = 131072;
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
constexpr auto kRpcTimeout = std::chrono::seconds(15);
constexpr auto kShutdownGrace = std::chrono::seconds(10);
constexpr int kReadBatch = 256;  // deliveries read between command checks
// Acks TryAck writes at once at most: 64 frames of 21 bytes, far below what
// a socket that polls writable takes without blocking.
constexpr std::size_t kMaxFastAcks = 64;
// What ReadDeliveries looks at in one go: whole deliveries within it are
// read by the loop, a larger one by the AMQP thread. Below librabbitmq's
// read buffer (kFrameMax), so that one read takes in everything peeked.
constexpr std::size_t kPeekBytes = 64 * 1024;

amqp_bytes_t Bytes(const std::string& text) {
  amqp_bytes_t bytes;
  bytes.len = text.size();
  bytes.bytes = const_cast<char*>(text.data());
  return bytes;
}

std::string Text(amqp_bytes_t bytes) {
  if (bytes.bytes == nullptr) return std::string();
  return std::string(static_cast<const char*>(bytes.bytes), bytes.len);
}

timeval ToTimeval(milliseconds ms) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

// ------------------------------------------------ librabbitmq <-> AmqpValue

AmqpValue FromAmqp(const amqp_field_value_t& in);

AmqpTable FromAmqp(const amqp_table_t& in) {
  AmqpTable table;
  table.reserve(static_cast<std::size_t>(std::max(0, in.num_entries)));
  for (int i = 0; i < in.num_entries; ++i) {
    table.push_back(
        AmqpField{Text(in.entries[i].key), FromAmqp(in.entries[i].value)});
  }
  return table;
}

AmqpValue FromAmqp(const amqp_field_value_t& in) {
  AmqpValue out;
  out.kind = static_cast<char>(in.kind);
  switch (in.kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
      out.boolean = in.value.boolean != 0;
      break;
    case AMQP_FIELD_KIND_I8:
      out.integer = in.value.i8;
      break;
    case AMQP_FIELD_KIND_U8:
      out.integer = in.value.u8;
      break;
    case AMQP_FIELD_KIND_I16:
      out.integer = in.value.i16;
      break;
    case AMQP_FIELD_KIND_U16:
      out.integer = in.value.u16;
      break;
    case AMQP_FIELD_KIND_I32:
      out.integer = in.value.i32;
      break;
    case AMQP_FIELD_KIND_U32:
      out.integer = in.value.u32;
      break;
    case AMQP_FIELD_KIND_I64:
      out.integer = in.value.i64;
      break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
      out.uinteger = in.value.u64;
      break;
    case AMQP_FIELD_KIND_F32:
      out.real = in.value.f32;
      break;
    case AMQP_FIELD_KIND_F64:
      out.real = in.value.f64;
      break;
    case AMQP_FIELD_KIND_DECIMAL:
      out.decimals = in.value.decimal.decimals;
      out.integer = in.value.decimal.value;
      break;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      out.bytes = Text(in.value.bytes);
      break;
    case AMQP_FIELD_KIND_ARRAY:
      for (int i = 0; i < in.value.array.num_entries; ++i) {
        out.array.push_back(FromAmqp(in.value.array.entries[i]));
      }
      break;
    case AMQP_FIELD_KIND_TABLE:
      out.table = FromAmqp(in.value.table);
      break;
    default:
      out.kind = 'V';
      break;
  }
  return out;
}

AmqpProperties FromAmqp(const amqp_basic_properties_t& in) {
  AmqpProperties out;
  auto text = [&in](amqp_flags_t flag, amqp_bytes_t bytes,
                    std::optional<std::string>* field) {
    if (in._flags & flag) *field = Text(bytes);
  };
  text(AMQP_BASIC_CONTENT_TYPE_FLAG, in.content_type, &out.content_type);
  text(AMQP_BASIC_CONTENT_ENCODING_FLAG, in.content_encoding,
       &out.content_encoding);
  text(AMQP_BASIC_CORRELATION_ID_FLAG, in.correlation_id, &out.correlation_id);
  text(AMQP_BASIC_REPLY_TO_FLAG, in.reply_to, &out.reply_to);
  text(AMQP_BASIC_EXPIRATION_FLAG, in.expiration, &out.expiration);
  text(AMQP_BASIC_MESSAGE_ID_FLAG, in.message_id, &out.message_id);
  text(AMQP_BASIC_TYPE_FLAG, in.type, &out.type);
  text(AMQP_BASIC_USER_ID_FLAG, in.user_id, &out.user_id);
  text(AMQP_BASIC_APP_ID_FLAG, in.app_id, &out.app_id);
  text(AMQP_BASIC_CLUSTER_ID_FLAG, in.cluster_id, &out.cluster_id);
  if (in._flags & AMQP_BASIC_DELIVERY_MODE_FLAG) {
    out.delivery_mode = in.delivery_mode;
  }
  if (in._flags & AMQP_BASIC_PRIORITY_FLAG) out.priority = in.priority;
  if (in._flags & AMQP_BASIC_TIMESTAMP_FLAG) out.timestamp = in.timestamp;
  if (in._flags & AMQP_BASIC_HEADERS_FLAG) out.headers = FromAmqp(in.headers);
  return out;
}

// The converse, allocating in POOL (which must outlive the use).
amqp_bytes_t PoolBytes(amqp_pool_t* pool, const std::string& text) {
  amqp_bytes_t bytes;
  if (text.empty()) {
    bytes.len = 0;
    bytes.bytes = nullptr;
    return bytes;
  }
  amqp_pool_alloc_bytes(pool, text.size(), &bytes);
  if (bytes.bytes != nullptr)
    std::memcpy(bytes.bytes, text.data(), text.size());
  return bytes;
}

void ToAmqp(const AmqpValue& in, amqp_pool_t* pool, amqp_field_value_t* out);

amqp_table_t ToAmqp(const AmqpTable& in, amqp_pool_t* pool) {
  amqp_table_t table;
  table.num_entries = static_cast<int>(in.size());
  table.entries = in.empty()
                      ? nullptr
                      : static_cast<amqp_table_entry_t*>(amqp_pool_alloc(
                            pool, sizeof(amqp_table_entry_t) * in.size()));
  if (table.entries == nullptr) {
    table.num_entries = 0;
    return table;
  }
  for (std::size_t i = 0; i < in.size(); ++i) {
    table.entries[i].key = PoolBytes(pool, in[i].name);
    ToAmqp(in[i].value, pool, &table.entries[i].value);
  }
  return table;
}

void ToAmqp(const AmqpValue& in, amqp_pool_t* pool, amqp_field_value_t* out) {
  std::memset(out, 0, sizeof(*out));
  out->kind = static_cast<uint8_t>(in.kind);
  switch (in.kind) {
    case 't':
      out->value.boolean = in.boolean ? 1 : 0;
      break;
    case 'b':
      out->value.i8 = static_cast<int8_t>(in.integer);
      break;
    case 'B':
      out->value.u8 = static_cast<uint8_t>(in.integer);
      break;
    case 's':
      out->value.i16 = static_cast<int16_t>(in.integer);
      break;
    case 'u':
      out->value.u16 = static_cast<uint16_t>(in.integer);
      break;
    case 'I':
      out->value.i32 = static_cast<int32_t>(in.integer);
      break;
    case 'i':
      out->value.u32 = static_cast<uint32_t>(in.integer);
      break;
    case 'l':
      out->value.i64 = in.integer;
      break;
    case 'L':
    case 'T':
      out->value.u64 = in.uinteger;
      break;
    case 'f':
      out->value.f32 = static_cast<float>(in.real);
      break;
    case 'd':
      out->value.f64 = in.real;
      break;
    case 'D':
      out->value.decimal.decimals = in.decimals;
      out->value.decimal.value = static_cast<uint32_t>(in.integer);
      break;
    case 'S':
    case 'x':
      out->value.bytes = PoolBytes(pool, in.bytes);
      break;
    case 'A': {
      out->value.array.num_entries = static_cast<int>(in.array.size());
      out->value.array.entries =
          in.array.empty()
              ? nullptr
              : static_cast<amqp_field_value_t*>(amqp_pool_alloc(
                    pool, sizeof(amqp_field_value_t) * in.array.size()));
      if (out->value.array.entries == nullptr) {
        out->value.array.num_entries = 0;
        break;
      }
      for (std::size_t i = 0; i < in.array.size(); ++i) {
        ToAmqp(in.array[i], pool, &out->value.array.entries[i]);
      }
      break;
    }
    case 'F':
      out->value.table = ToAmqp(in.table, pool);
      break;
    default:
      out->kind = AMQP_FIELD_KIND_VOID;
      break;
  }
}

amqp_basic_properties_t ToAmqp(const AmqpProperties& in, amqp_pool_t* pool) {
  amqp_basic_properties_t out;
  std::memset(&out, 0, sizeof(out));
  auto text = [&out, pool](amqp_flags_t flag,
                           const std::optional<std::string>& field,
                           amqp_bytes_t* bytes) {
    if (!field) return;
    out._flags |= flag;
    *bytes = PoolBytes(pool, *field);
  };
  text(AMQP_BASIC_CONTENT_TYPE_FLAG, in.content_type, &out.content_type);
  text(AMQP_BASIC_CONTENT_ENCODING_FLAG, in.content_encoding,
       &out.content_encoding);
  text(AMQP_BASIC_CORRELATION_ID_FLAG, in.correlation_id, &out.correlation_id);
  text(AMQP_BASIC_REPLY_TO_FLAG, in.reply_to, &out.reply_to);
  text(AMQP_BASIC_EXPIRATION_FLAG, in.expiration, &out.expiration);
  text(AMQP_BASIC_MESSAGE_ID_FLAG, in.message_id, &out.message_id);
  text(AMQP_BASIC_TYPE_FLAG, in.type, &out.type);
  text(AMQP_BASIC_USER_ID_FLAG, in.user_id, &out.user_id);
  text(AMQP_BASIC_APP_ID_FLAG, in.app_id, &out.app_id);
  text(AMQP_BASIC_CLUSTER_ID_FLAG, in.cluster_id, &out.cluster_id);
  if (in.delivery_mode) {
    out._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    out.delivery_mode = *in.delivery_mode;
  }
  if (in.priority) {
    out._flags |= AMQP_BASIC_PRIORITY_FLAG;
    out.priority = *in.priority;
  }
  if (in.timestamp) {
    out._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    out.timestamp = *in.timestamp;
  }
  if (in.headers) {
    out._flags |= AMQP_BASIC_HEADERS_FLAG;
    out.headers = ToAmqp(*in.headers, pool);
  }
  return out;
}

// ------------------------------------------------------------ error texts

struct RpcError {
  std::string text;
  int code = 0;  // AMQP reply code of a server close, else 0
  bool channel_closed = false;
  bool connection_closed = false;
};

RpcError DescribeReply(const amqp_rpc_reply_t& reply) {
  RpcError error;
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      error.text = "ok";
      break;
    case AMQP_RESPONSE_NONE:
      error.text = "no reply from RabbitMQ";
      break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
      error.text = amqp_error_string2(reply.library_error);
      break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        auto* close =
            static_cast<amqp_connection_close_t*>(reply.reply.decoded);
        error.code = close->reply_code;
        error.text = Text(close->reply_text);
        error.connection_closed = true;
      } else if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        auto* close = static_cast<amqp_channel_close_t*>(reply.reply.decoded);
        error.code = close->reply_code;
        error.text = Text(close->reply_text);
        error.channel_closed = true;
      } else {
        error.text = std::string("unexpected method ") +
                     amqp_method_name(reply.reply.id);
      }
      break;
  }
  return error;
}

// ------------------------------------------------------------ TCP connect

// Connects to HOST:PORT without blocking past TIMEOUT; gives up early when
// STOP_REQUESTED says so (checked whenever WAKE_FD is readable). Returns a
// non-blocking socket, or -1 with *ERROR set.
int ConnectTcp(const std::string& host, int port, milliseconds timeout,
               int wake_fd, const std::function<bool()>& stop_requested,
               std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0) {
    *error = "cannot resolve host '" + host + "': " + gai_strerror(rc);
    return -1;
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
    *error = "cannot connect to " + host + ":" + service + ": " + last;
    return -1;
  }
  int one = 1;
  setsockopt(result, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(result, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  return result;
}

}  // namespace

// ===================================================================== Impl

class AmqpSession::Impl {
 public:
  Impl(AmqpServiceConfig config, std::function<void()> wake)
      : config_(std::move(config)),
        wake_(std::move(wake)),
        rng_(std::random_device{}()) {
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }
  ~Impl() {
    Join();
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  void Post(AmqpCommand command) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      was_empty = commands_.empty();
      commands_.push_back(std::move(command));
    }
    // Commands already waiting were announced by the Post that queued the
    // first of them, and the AMQP thread takes them all at once after it
    // drained the eventfd: one write per batch, not per settle.
    if (!was_empty) return;
    WakeAmqpThread();
  }

  void WakeAmqpThread() {
    uint64_t one = 1;
    ssize_t n = write(wake_fd_, &one, sizeof(one));
    (void)n;
  }

  std::deque<AmqpEvent> TakeEvents() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(events_, {});
  }

  // See AmqpSession::TryAck. Runs on the loop thread and must never block:
  // it only try-locks the connection, and writes only a 21-byte basic.ack
  // to a plain TCP socket that poll() just reported writable (a frame that
  // small then goes out whole, without librabbitmq waiting for the socket;
  // FlushAcks writes at most one frame per tag, and at most kMaxFastAcks).
  AmqpFastAck TryAck(uint64_t generation, const std::vector<uint64_t>& tags) {
    if (tags.empty() || tags.size() > kMaxFastAcks) return AmqpFastAck::kNotNow;
    if (config_.url.tls) return AmqpFastAck::kNotNow;  // SSL_write may read
    std::unique_lock<std::mutex> conn(conn_mutex_, std::try_to_lock);
    if (!conn.owns_lock()) return AmqpFastAck::kNotNow;
    if (!connected_ || conn_ == nullptr || generation != generation_ ||
        shutdown_ || !pending_acks_.empty() || !loop_error_.empty()) {
      return AmqpFastAck::kNotNow;
    }
    {
      // A command queued earlier goes first (a settle with publishes, a
      // stop): the AMQP thread takes this one after it, in order.
      std::lock_guard<std::mutex> lock(mutex_);
      if (!commands_.empty()) return AmqpFastAck::kNotNow;
    }
    pollfd fd = {amqp_get_sockfd(conn_), POLLOUT, 0};
    if (poll(&fd, 1, 0) != 1 || fd.revents != POLLOUT) {
      return AmqpFastAck::kNotNow;
    }
    std::string error;
    bool ok = true;
    for (uint64_t tag : tags) {
      ok = ok && Finish(tag, AmqpOutcome::kAcked, std::string(), false, &error,
                        /*emit=*/false);
    }
    if (!ok || !FlushAcks(&error)) {
      // The stream may be torn: the AMQP thread drops the connection
      // (RabbitMQ requeues the delivery) as soon as it wakes.
      loop_error_ = error;
      WakeAmqpThread();
      return AmqpFastAck::kLost;
    }
    if (!busy_) {
      // The AMQP thread sleeps without a depth-poll deadline: give it one.
      busy_ = true;
      WakeAmqpThread();
    }
    return AmqpFastAck::kAcked;
  }

  // See AmqpSession::ReadDeliveries. Runs on the loop thread and must never
  // block: librabbitmq reads a delivery's content frames without a timeout,
  // so the loop only lets it read deliveries whose every byte is already
  // here (peeked and scanned); it may send a heartbeat on its way into a
  // read, hence the writable check, as in TryAck.
  AmqpLoopRead ReadDeliveries(uint64_t generation,
                              std::vector<std::unique_ptr<AmqpDelivery>>* out) {
    std::unique_lock<std::mutex> conn(conn_mutex_, std::try_to_lock);
    if (!conn.owns_lock()) return HandReadsBack();
    if (!connected_ || conn_ == nullptr || generation != generation_ ||
        !loop_may_read_ || declined_generation_ == generation_ ||
        stop_consuming_ || shutdown_ || !loop_error_.empty() ||
        amqp_frames_enqueued(conn_) || amqp_data_in_buffer(conn_)) {
      return HandReadsBack();
    }
    const int fd = amqp_get_sockfd(conn_);
    pollfd writable = {fd, POLLOUT, 0};
    if (poll(&writable, 1, 0) != 1 || writable.revents != POLLOUT) {
      return HandReadsBack();
    }
    ssize_t n = recv(fd, peek_.data(), peek_.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return AmqpLoopRead::kKeepWatching;  // woken for nothing
    }
    if (n <= 0) return HandReadsBack();  // EOF or an error: the thread's
    last_rx_ = Clock::now();             // heard from RabbitMQ
    AmqpDeliveryScan scan = ScanDeliveries(
        peek_.data(), static_cast<std::size_t>(n), kConsumeChannel);
    // Heartbeats alone, a confirm, a partial or large delivery: the AMQP
    // thread reads those.
    if (scan.deliveries == 0) return HandReadsBack();
    const bool was_busy = busy_;
    int read = 0;
    for (; read < scan.deliveries; ++read) {
      amqp_maybe_release_buffers(conn_);
      amqp_envelope_t envelope;
      timeval zero = {0, 0};
      amqp_rpc_reply_t reply = amqp_consume_message(conn_, &envelope, &zero, 0);
      if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        if (reply.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION ||
            (reply.library_error != AMQP_STATUS_TIMEOUT &&
             reply.library_error != AMQP_STATUS_UNEXPECTED_STATE)) {
          loop_error_ = DescribeReply(reply).text;
        }
        break;
      }
      std::unique_ptr<AmqpDelivery> delivery = TakeDelivery(envelope);
      amqp_destroy_envelope(&envelope);
      if (delivery) out->push_back(std::move(delivery));
    }
    if (!was_busy && busy_) {
      // The AMQP thread sleeps without a depth-poll deadline: give it one.
      WakeAmqpThread();
    }
    // Left to the AMQP thread: what follows in librabbitmq's buffer (the
    // socket no longer shows it), or whatever stopped a read the scan
    // promised (watching on would only spin).
    if (read < scan.deliveries || !loop_error_.empty() ||
        amqp_frames_enqueued(conn_) || amqp_data_in_buffer(conn_)) {
      return HandReadsBack();
    }
    return AmqpLoopRead::kKeepWatching;
  }

  void DeclineReads(uint64_t generation) {
    declined_generation_ = generation;
    HandReadsBack();
  }

 private:
  AmqpLoopRead HandReadsBack() {
    loop_watches_ = false;
    WakeAmqpThread();
    return AmqpLoopRead::kStopWatching;
  }

  // ---------------------------------------------------------- plumbing

  void Emit(AmqpEvent event) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(std::move(event));
    }
    wake_();
  }

  std::deque<AmqpCommand> TakeCommands() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(commands_, {});
  }

  bool CommandsWaiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    return !commands_.empty();
  }

  bool ShutdownWaiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const AmqpCommand& command : commands_) {
      if (command.type == AmqpCommand::Type::kShutdown) return true;
    }
    return false;
  }

  void DrainWakeFd() {
    uint64_t value;
    while (read(wake_fd_, &value, sizeof(value)) > 0) {
    }
  }

  double Random01() {
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }

  // ---------------------------------------------------------- main loop

  void Run() {
    // The thread holds the connection lock all the time but while it sleeps
    // in ServeLoop's poll(): that is the only window for TryAck.
    conn_lock_.lock();
    int attempt = 0;
    while (!shutdown_) {
      if (!stop_consuming_) {
        std::string error;
        if (Connect(&error)) {
          attempt = 0;
          Serve();
          if (shutdown_) break;
        } else {
          LogConnectFailure(error, attempt);
          ++attempt;
        }
      }
      // Disconnected: wait (for the backoff, or for the shutdown when
      // stopping), handling commands meanwhile.
      auto until = Clock::now() + config_.reconnect_backoff.Delay(
                                      std::max(0, attempt - 1), Random01());
      while (!shutdown_) {
        DisconnectedCommands();
        if (shutdown_) break;
        auto left =
            std::chrono::duration_cast<milliseconds>(until - Clock::now());
        if (!stop_consuming_ && left.count() <= 0) break;
        pollfd fd = {wake_fd_, POLLIN, 0};
        poll(&fd, 1,
             stop_consuming_ ? 1000
                             : static_cast<int>(std::max<long>(
                                   1, static_cast<long>(left.count()))));
        DrainWakeFd();
      }
    }
    conn_lock_.unlock();
    AmqpEvent event;
    event.type = AmqpEvent::Type::kStopped;
    Emit(std::move(event));
  }

  // Commands while there is no connection: deliveries of the lost one are
  // back in their queues already, progress has nowhere to go.
  void DisconnectedCommands() {
    for (AmqpCommand& command : TakeCommands()) {
      if (command.type == AmqpCommand::Type::kStopConsuming) {
        stop_consuming_ = true;
      } else if (command.type == AmqpCommand::Type::kShutdown) {
        shutdown_ = true;
      }
    }
  }

  void LogConnectFailure(const std::string& error, int attempt) {
    int held_back = 0;
    if (!connect_log_.ShouldLog(error, Clock::now(), &held_back)) return;
    Duration next =
        config_.reconnect_backoff.Delay(std::max(0, attempt), /*random=*/0.5);
    std::string line = "error: " + error + "; retrying in about " +
                       FormatDuration(next) + " (attempt " +
                       std::to_string(attempt + 1);
    if (held_back > 0) {
      line += ", " + std::to_string(held_back) +
              " failures like this one not logged since the last line";
    }
    line += ")";
    AmqpLog(line);
  }

  // ---------------------------------------------------------- connecting

  bool Connect(std::string* error) {
    const AmqpUrl& url = config_.url;
    conn_ = amqp_new_connection();
    if (conn_ == nullptr) {
      *error = "out of memory creating a connection";
      return false;
    }
    if (url.tls) {
      amqp_socket_t* socket = amqp_ssl_socket_new(conn_);
      if (socket == nullptr) {
        *error = "cannot create a TLS socket";
        return Abandon();
      }
      timeval tv = ToTimeval(config_.connect_timeout);
      int rc =
          amqp_socket_open_noblock(socket, url.host.c_str(), url.port, &tv);
      if (rc != AMQP_STATUS_OK) {
        *error = "cannot connect to " + url.host + ":" +
                 std::to_string(url.port) + " (TLS): " + amqp_error_string2(rc);
        return Abandon();
      }
    } else {
      int fd = ConnectTcp(
          url.host, url.port, config_.connect_timeout, wake_fd_,
          [this] { return ShutdownWaiting(); }, error);
      if (fd < 0) return Abandon();
      amqp_socket_t* socket = amqp_tcp_socket_new(conn_);
      if (socket == nullptr) {
        close(fd);
        *error = "cannot create a socket object";
        return Abandon();
      }
      amqp_tcp_socket_set_sockfd(socket, fd);
    }
    timeval handshake = ToTimeval(kHandshakeTimeout);
    amqp_set_handshake_timeout(conn_, &handshake);
    amqp_rpc_reply_t login = amqp_login(
        conn_, url.vhost.c_str(), 0, kFrameMax, config_.heartbeat_s,
        AMQP_SASL_METHOD_PLAIN, url.user.c_str(), url.password.c_str());
    if (login.reply_type != AMQP_RESPONSE_NORMAL) {
      *error = DescribeLoginFailure(DescribeReply(login));
      return Abandon();
    }
    timeval rpc = ToTimeval(kRpcTimeout);
    amqp_set_rpc_timeout(conn_, &rpc);
    heartbeat_ = amqp_get_heartbeat(conn_);

    if (!OpenChannel(kConsumeChannel, error)) return Abandon();
    if (!OpenChannel(kDeclareChannel, error)) return Abandon();
    declare_channel_open_ = true;
    amqp_confirm_select(conn_, kConsumeChannel);
    if (!RpcOk("confirm.select", error)) return Abandon();
    amqp_basic_qos(conn_, kConsumeChannel, 0,
                   static_cast<uint16_t>(config_.prefetch), 0);
    if (!RpcOk("basic.qos", error)) return Abandon();

    if (!config_.dead_letter_queue.empty() &&
        !DeclareQueue(config_.dead_letter_queue, /*create=*/true,
                      "dead_letter_queue", error)) {
      return Abandon();
    }
    for (const std::string& queue : config_.queues) {
      if (!DeclareQueue(queue, config_.declare, "queues", error)) {
        return Abandon();
      }
    }
    consumers_.clear();
    for (const std::string& queue : config_.queues) {
      amqp_basic_consume_ok_t* ok =
          amqp_basic_consume(conn_, kConsumeChannel, Bytes(queue),
                             amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
      if (ok == nullptr) {
        RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
        *error = "cannot consume queue '" + queue + "': " + why.text;
        return Abandon();
      }
      consumers_[Text(ok->consumer_tag)] = queue;
    }

    ++generation_;
    connected_ = true;
    next_seq_ = 1;
    unconfirmed_.clear();
    settles_.clear();
    unsettled_.clear();
    pending_acks_.clear();
    last_rx_ = Clock::now();
    next_stats_ = Clock::now();  // a first look right away
    busy_ = true;
    std::string queues;
    for (const std::string& queue : config_.queues) {
      queues += (queues.empty() ? "'" : ", '") + queue + "'";
    }
    AmqpLog("connected to " + url.Describe() + " as '" + url.user +
            "'; consuming " + queues + " (prefetch " +
            std::to_string(config_.prefetch) + ", heartbeat " +
            std::to_string(heartbeat_) + "s)");
    connect_log_.Reset();
    AmqpEvent event;
    event.type = AmqpEvent::Type::kConnected;
    event.generation = generation_;
    // TLS stays with this thread: SSL may hold bytes poll() cannot see.
    event.fd = url.tls ? -1 : fcntl(amqp_get_sockfd(conn_), F_DUPFD_CLOEXEC, 0);
    loop_may_read_ = event.fd >= 0;
    loop_watches_ = false;
    Emit(std::move(event));
    return true;
  }

  std::string DescribeLoginFailure(const RpcError& why) {
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

  // Drops the connection being set up; returns false for the caller.
  bool Abandon() {
    if (conn_ != nullptr) {
      // The loop's dup of the socket would keep the TCP connection open
      // (and RabbitMQ holding our unacked deliveries) until the loop closes
      // it; shutdown ends it now, for both descriptors. Plain TCP only:
      // the TLS layer still writes its close on destroy.
      const int fd = amqp_get_sockfd(conn_);
      if (loop_may_read_ && fd >= 0) shutdown(fd, SHUT_RDWR);
      amqp_destroy_connection(conn_);
      conn_ = nullptr;
    }
    connected_ = false;
    declare_channel_open_ = false;
    loop_may_read_ = false;
    loop_watches_ = false;
    return false;
  }

  bool RpcOk(const char* what, std::string* error) {
    amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn_);
    if (reply.reply_type == AMQP_RESPONSE_NORMAL) return true;
    *error = std::string(what) + " failed: " + DescribeReply(reply).text;
    return false;
  }

  bool OpenChannel(amqp_channel_t channel, std::string* error) {
    amqp_channel_open(conn_, channel);
    return RpcOk("channel.open", error);
  }

  // After RabbitMQ closed the declare channel (a 404 or 406 there): answer
  // close-ok and open it again. False when the connection is unusable.
  bool ReopenDeclareChannel(std::string* error) {
    amqp_channel_close_ok_t close_ok;
    close_ok.dummy = 0;
    if (amqp_send_method(conn_, kDeclareChannel, AMQP_CHANNEL_CLOSE_OK_METHOD,
                         &close_ok) != AMQP_STATUS_OK) {
      *error = "cannot answer channel.close";
      return false;
    }
    declare_channel_open_ = false;
    if (!OpenChannel(kDeclareChannel, error)) return false;
    declare_channel_open_ = true;
    return true;
  }

  // Declares QUEUE durable when CREATE, else checks it exists (passive).
  // A queue that exists with other arguments (e.g. a quorum queue, or one
  // with its own x-dead-letter-exchange) is used as it is.
  bool DeclareQueue(const std::string& queue, bool create, const char* key,
                    std::string* error) {
    if (create) {
      amqp_queue_declare_ok_t* ok = amqp_queue_declare(
          conn_, kDeclareChannel, Bytes(queue), 0, 1, 0, 0, amqp_empty_table);
      if (ok != nullptr) return true;
      RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
      if (!why.channel_closed || why.code != 406) {
        *error = "cannot declare queue '" + queue + "' (" + key + ") on " +
                 config_.url.Describe() + ": " + why.text;
        return false;
      }
      // 406 PRECONDITION_FAILED: it exists, declared differently.
      if (!ReopenDeclareChannel(error)) return false;
    }
    amqp_queue_declare_ok_t* ok = amqp_queue_declare(
        conn_, kDeclareChannel, Bytes(queue), 1, 0, 0, 0, amqp_empty_table);
    if (ok != nullptr) return true;
    RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
    if (why.channel_closed && why.code == 404) {
      *error = "queue '" + queue + "' does not exist on " +
               config_.url.Describe() + " (" + why.text +
               "); create it, or set declare: true in the group's rabbitmq "
               "section";
    } else {
      *error = "cannot check queue '" + queue + "' on " +
               config_.url.Describe() + ": " + why.text;
    }
    return false;
  }

  // ---------------------------------------------------------- connected

  // Runs until the connection fails or the shutdown completes; leaves
  // conn_ destroyed either way.
  void Serve() {
    std::string error;
    if (!ServeLoop(&error)) Lost(error);
  }

  bool ServeLoop(std::string* error) {
    const int fd = amqp_get_sockfd(conn_);
    for (;;) {
      if (!loop_error_.empty()) {
        *error = std::exchange(loop_error_, std::string());
        return false;
      }
      if (!RunCommands(error)) return false;
      if (!FlushAcks(error)) return false;
      if (shutdown_) {
        if (settles_.empty() || Clock::now() >= shutdown_deadline_) {
          if (!settles_.empty()) {
            AmqpLog("warning: " + std::to_string(settles_.size()) +
                    " deliveries still wait for publish confirms after " +
                    FormatDuration(
                        std::chrono::duration_cast<Duration>(kShutdownGrace)) +
                    "; closing anyway (RabbitMQ redelivers them)");
          }
          CloseGracefully();
          return true;
        }
      }
      int read = 0;
      for (; read < kReadBatch; ++read) {
        int got = ReadOne(error);
        if (got < 0) return false;
        if (got == 0) break;
      }
      if (read == kReadBatch || CommandsWaiting()) continue;
      if (!MaybeRefreshStats(error)) return false;
      if (amqp_frames_enqueued(conn_) || amqp_data_in_buffer(conn_)) continue;

      auto now = Clock::now();
      if (heartbeat_ > 0 &&
          now - last_rx_ > std::chrono::seconds(2 * heartbeat_ + 1)) {
        *error = "nothing heard from RabbitMQ for " +
                 std::to_string(2 * heartbeat_) +
                 "s (missed heartbeats): connection considered dead";
        return false;
      }
      milliseconds wait(heartbeat_ > 0 ? heartbeat_ * 500 : 30000);
      if (busy_) {
        wait = std::min(wait, std::max(milliseconds(1),
                                       std::chrono::duration_cast<milliseconds>(
                                           next_stats_ - now)));
      }
      if (shutdown_) wait = std::min(wait, milliseconds(100));
      if (!FlushAcks(error)) return false;  // confirms read above
      if (loop_may_read_ && declined_generation_ != generation_ &&
          !stop_consuming_ && !shutdown_ && !loop_watches_) {
        // The loop watches the socket while this thread sleeps, and reads
        // what it can without it (ReadDeliveries).
        loop_watches_ = true;
        AmqpEvent event;
        event.type = AmqpEvent::Type::kLoopReads;
        event.generation = generation_;
        Emit(std::move(event));
      }
      const bool loop_watches = loop_watches_ && !stop_consuming_ && !shutdown_;
      pollfd fds[2] = {{loop_watches ? -1 : fd, POLLIN, 0},
                       {wake_fd_, POLLIN, 0}};
      conn_lock_.unlock();  // TryAck's window
      int n = poll(fds, 2, static_cast<int>(wait.count()));
      conn_lock_.lock();
      if (n > 0 && fds[0].revents != 0) last_rx_ = Clock::now();
      if (n > 0 && fds[1].revents != 0) DrainWakeFd();
    }
  }

  void Lost(const std::string& error) {
    Abandon();
    settles_.clear();
    unconfirmed_.clear();
    unsettled_.clear();  // RabbitMQ requeues them
    pending_acks_.clear();
    AmqpLog("error: connection to " + config_.url.Describe() +
            " lost: " + error +
            "; unacked deliveries go back to their queues; reconnecting");
    AmqpEvent event;
    event.type = AmqpEvent::Type::kDisconnected;
    event.generation = generation_;
    event.text = error;
    Emit(std::move(event));
  }

  void CloseGracefully() {
    std::string ack_error;
    if (!FlushAcks(&ack_error)) {
      AmqpLog("warning: " + ack_error + " while closing");
    }
    amqp_channel_close(conn_, kConsumeChannel, AMQP_REPLY_SUCCESS);
    if (declare_channel_open_) {
      amqp_channel_close(conn_, kDeclareChannel, AMQP_REPLY_SUCCESS);
    }
    amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    Abandon();
    AmqpLog("connection to " + config_.url.Describe() + " closed");
  }

  // One frame's worth of work: 1 when something was read, 0 when nothing
  // is waiting, -1 on a connection error.
  int ReadOne(std::string* error) {
    amqp_maybe_release_buffers(conn_);
    amqp_envelope_t envelope;
    timeval zero = {0, 0};
    amqp_rpc_reply_t reply = amqp_consume_message(conn_, &envelope, &zero, 0);
    if (reply.reply_type == AMQP_RESPONSE_NORMAL) {
      last_rx_ = Clock::now();
      OnDelivery(envelope);
      amqp_destroy_envelope(&envelope);
      return 1;
    }
    if (reply.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION) {
      *error = DescribeReply(reply).text;
      return -1;
    }
    if (reply.library_error == AMQP_STATUS_TIMEOUT) return 0;
    if (reply.library_error != AMQP_STATUS_UNEXPECTED_STATE) {
      *error = amqp_error_string2(reply.library_error);
      return -1;
    }
    // Not a delivery: a confirm, a cancel, a close...
    amqp_frame_t frame;
    int rc = amqp_simple_wait_frame_noblock(conn_, &frame, &zero);
    if (rc == AMQP_STATUS_TIMEOUT) return 0;
    if (rc != AMQP_STATUS_OK) {
      *error = amqp_error_string2(rc);
      return -1;
    }
    last_rx_ = Clock::now();
    return OnFrame(frame, error) ? 1 : -1;
  }

  void OnDelivery(const amqp_envelope_t& envelope) {
    std::unique_ptr<AmqpDelivery> delivery = TakeDelivery(envelope);
    if (!delivery) return;
    AmqpEvent event;
    event.type = AmqpEvent::Type::kDelivery;
    event.generation = generation_;
    event.delivery = std::move(delivery);
    Emit(std::move(event));
  }

  // Either thread, with the connection lock held.
  std::unique_ptr<AmqpDelivery> TakeDelivery(const amqp_envelope_t& envelope) {
    // Every delivery, even one dropped here, is unacked until settled: a
    // multiple ack must never reach past it.
    unsettled_.insert(envelope.delivery_tag);
    if (stop_consuming_) return nullptr;  // unacked: requeued when we close
    auto delivery = std::make_unique<AmqpDelivery>();
    delivery->generation = generation_;
    delivery->tag = envelope.delivery_tag;
    auto consumer = consumers_.find(Text(envelope.consumer_tag));
    delivery->queue = consumer != consumers_.end() ? consumer->second
                                                   : Text(envelope.routing_key);
    delivery->exchange = Text(envelope.exchange);
    delivery->routing_key = Text(envelope.routing_key);
    delivery->redelivered = envelope.redelivered != 0;
    delivery->properties = FromAmqp(envelope.message.properties);
    delivery->body = Text(envelope.message.body);
    busy_ = true;
    return delivery;
  }

  bool OnFrame(const amqp_frame_t& frame, std::string* error) {
    if (frame.frame_type != AMQP_FRAME_METHOD) return true;
    switch (frame.payload.method.id) {
      case AMQP_BASIC_ACK_METHOD: {
        auto* ack =
            static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
        return OnConfirm(ack->delivery_tag, ack->multiple != 0, true, error);
      }
      case AMQP_BASIC_NACK_METHOD: {
        auto* nack =
            static_cast<amqp_basic_nack_t*>(frame.payload.method.decoded);
        return OnConfirm(nack->delivery_tag, nack->multiple != 0, false, error);
      }
      case AMQP_BASIC_CANCEL_METHOD: {
        auto* cancel =
            static_cast<amqp_basic_cancel_t*>(frame.payload.method.decoded);
        auto consumer = consumers_.find(Text(cancel->consumer_tag));
        std::string queue =
            consumer != consumers_.end() ? consumer->second : "?";
        *error = "RabbitMQ cancelled the consumer of queue '" + queue +
                 "' (was the queue deleted?)";
        return false;
      }
      case AMQP_BASIC_RETURN_METHOD: {
        // Not asked for (no mandatory flag); read its content and drop it.
        amqp_message_t message;
        amqp_rpc_reply_t reply =
            amqp_read_message(conn_, frame.channel, &message, 0);
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
          *error = DescribeReply(reply).text;
          return false;
        }
        amqp_destroy_message(&message);
        return true;
      }
      case AMQP_CHANNEL_CLOSE_METHOD: {
        auto* close =
            static_cast<amqp_channel_close_t*>(frame.payload.method.decoded);
        if (frame.channel == kDeclareChannel) {
          // A depth poll found a queue gone; its consumer's cancel follows.
          declare_channel_open_ = false;
          return ReopenDeclareChannel(error);
        }
        *error = "RabbitMQ closed the channel: " +
                 std::to_string(close->reply_code) + " " +
                 Text(close->reply_text);
        return false;
      }
      case AMQP_CONNECTION_CLOSE_METHOD: {
        auto* close =
            static_cast<amqp_connection_close_t*>(frame.payload.method.decoded);
        *error = "RabbitMQ closed the connection: " + Text(close->reply_text);
        amqp_connection_close_ok_t close_ok;
        close_ok.dummy = 0;
        amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &close_ok);
        return false;
      }
      case AMQP_CONNECTION_BLOCKED_METHOD: {
        auto* blocked = static_cast<amqp_connection_blocked_t*>(
            frame.payload.method.decoded);
        AmqpLog("warning: RabbitMQ blocked publishing on this connection: " +
                Text(blocked->reason));
        return true;
      }
      case AMQP_CONNECTION_UNBLOCKED_METHOD:
        AmqpLog("RabbitMQ unblocked publishing on this connection");
        return true;
      default:
        return true;
    }
  }

  // ---------------------------------------------------------- commands

  bool RunCommands(std::string* error) {
    for (AmqpCommand& command : TakeCommands()) {
      switch (command.type) {
        case AmqpCommand::Type::kSettle:
          if (!Settle(command, error)) return false;
          break;
        case AmqpCommand::Type::kPublish:
          for (const AmqpPublish& publish : command.publishes) {
            if (!Publish(publish, 0, error)) return false;
          }
          break;
        case AmqpCommand::Type::kStopConsuming:
          if (!StopConsuming(error)) return false;
          break;
        case AmqpCommand::Type::kShutdown:
          shutdown_ = true;
          shutdown_deadline_ = Clock::now() + kShutdownGrace;
          break;
      }
    }
    return true;
  }

  bool StopConsuming(std::string* error) {
    if (stop_consuming_) return true;
    stop_consuming_ = true;
    for (const auto& [tag, queue] : consumers_) {
      amqp_basic_cancel(conn_, kConsumeChannel, Bytes(tag));
      if (!RpcOk("basic.cancel", error)) return false;
    }
    AmqpLog("stopped consuming; finishing the deliveries in flight");
    return true;
  }

  bool Settle(AmqpCommand& command, std::string* error) {
    if (command.generation != generation_) return true;  // requeued already
    busy_ = true;
    if (command.publishes.empty()) {
      return Finish(command.tag, command.outcome, command.queue, false, error);
    }
    uint64_t id = next_settle_++;
    settles_[id] =
        PendingSettle{command.tag, command.outcome, command.queue,
                      static_cast<int>(command.publishes.size()), false};
    for (const AmqpPublish& publish : command.publishes) {
      if (!Publish(publish, id, error)) return false;
    }
    return true;
  }

  bool Publish(const AmqpPublish& publish, uint64_t settle_id,
               std::string* error) {
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t properties = ToAmqp(publish.properties, &pool);
    amqp_bytes_t body;
    body.len = publish.body.size();
    body.bytes = const_cast<char*>(publish.body.data());
    int rc =
        amqp_basic_publish(conn_, kConsumeChannel, amqp_empty_bytes,
                           Bytes(publish.routing_key), 0, 0, &properties, body);
    empty_amqp_pool(&pool);
    if (rc != AMQP_STATUS_OK) {
      *error = std::string("publish to '") + publish.routing_key +
               "' failed: " + amqp_error_string2(rc);
      return false;
    }
    unconfirmed_[next_seq_++] = settle_id;
    return true;
  }

  bool OnConfirm(uint64_t seq, bool multiple, bool ok, std::string* error) {
    auto end =
        multiple ? unconfirmed_.upper_bound(seq) : unconfirmed_.find(seq);
    auto begin = multiple ? unconfirmed_.begin() : end;
    if (!multiple) {
      if (end == unconfirmed_.end()) return true;
      ++end;
    }
    std::vector<uint64_t> done;
    for (auto it = begin; it != end; ++it) {
      if (it->second != 0) done.push_back(it->second);
    }
    unconfirmed_.erase(begin, end);
    for (uint64_t id : done) {
      auto found = settles_.find(id);
      if (found == settles_.end()) continue;
      PendingSettle& pending = found->second;
      if (!ok) pending.nacked = true;
      if (--pending.remaining > 0) continue;
      PendingSettle copy = pending;
      settles_.erase(found);
      if (!Finish(copy.tag, copy.outcome, copy.queue, copy.nacked, error)) {
        return false;
      }
    }
    return true;
  }

  // The ack or reject of a delivery, once its publishes are confirmed.
  bool Finish(uint64_t tag, AmqpOutcome outcome, const std::string& queue,
              bool nacked, std::string* error, bool emit = true) {
    if (nacked) {
      AmqpLog(
          "warning: RabbitMQ refused (nack) a message published for a "
          "delivery of '" +
          queue + "'; requeueing that delivery");
      outcome = AmqpOutcome::kRequeued;
    }
    int rc = AMQP_STATUS_OK;
    unsettled_.erase(tag);
    switch (outcome) {
      case AmqpOutcome::kAcked:
      case AmqpOutcome::kRetried:
      case AmqpOutcome::kDeadLettered:
        pending_acks_.push_back(tag);  // sent by FlushAcks()
        break;
      case AmqpOutcome::kRejected:
      case AmqpOutcome::kRequeued:
        if (!FlushAcks(error)) return false;
        rc = amqp_basic_reject(conn_, kConsumeChannel, tag,
                               outcome == AmqpOutcome::kRequeued ? 1 : 0);
        break;
    }
    if (rc != AMQP_STATUS_OK) {
      *error = std::string("ack failed: ") + amqp_error_string2(rc);
      return false;
    }
    if (!emit) return true;
    AmqpEvent event;
    event.type = AmqpEvent::Type::kSettled;
    event.generation = generation_;
    event.queue = queue;
    event.outcome = outcome;
    Emit(std::move(event));
    return true;
  }

  // Sends the acks Finish() collected since the last flush: one basic.ack
  // with multiple=1 for every collected tag below the oldest delivery still
  // unsettled (RabbitMQ then settles all unacked tags up to it, and those
  // are exactly the collected ones), single acks for the rest. Under load
  // this is one write for a whole batch instead of one per message.
  bool FlushAcks(std::string* error) {
    if (pending_acks_.empty()) return true;
    const uint64_t oldest_open =
        unsettled_.empty() ? UINT64_MAX : *unsettled_.begin();
    uint64_t covered = 0;
    for (uint64_t tag : pending_acks_) {
      if (tag < oldest_open) covered = std::max(covered, tag);
    }
    int rc = AMQP_STATUS_OK;
    if (covered != 0) {
      rc = amqp_basic_ack(conn_, kConsumeChannel, covered, /*multiple=*/1);
    }
    for (uint64_t tag : pending_acks_) {
      if (rc != AMQP_STATUS_OK) break;
      if (tag > oldest_open) {
        rc = amqp_basic_ack(conn_, kConsumeChannel, tag, /*multiple=*/0);
      }
    }
    pending_acks_.clear();
    if (rc != AMQP_STATUS_OK) {
      *error = std::string("ack failed: ") + amqp_error_string2(rc);
      return false;
    }
    return true;
  }

  // ---------------------------------------------------------- depth polls

  // A passive queue.declare per queue every stats_interval, but only while
  // busy (deliveries or settles since the last look), plus one look after
  // it goes quiet so the figures end at the true depth. An idle service
  // thus costs RabbitMQ nothing and wakes only for heartbeats.
  bool MaybeRefreshStats(std::string* error) {
    if (!busy_ || Clock::now() < next_stats_) return true;
    busy_ = false;
    next_stats_ = Clock::now() + config_.stats_interval;
    for (const std::string& queue : config_.queues) {
      if (!declare_channel_open_) {
        if (!OpenChannel(kDeclareChannel, error)) return false;
        declare_channel_open_ = true;
      }
      amqp_queue_declare_ok_t* ok = amqp_queue_declare(
          conn_, kDeclareChannel, Bytes(queue), 1, 0, 0, 0, amqp_empty_table);
      if (ok == nullptr) {
        RpcError why = DescribeReply(amqp_get_rpc_reply(conn_));
        if (!why.channel_closed) {
          *error =
              "queue.declare (passive) of '" + queue + "' failed: " + why.text;
          return false;
        }
        AmqpLog("warning: cannot look at queue '" + queue + "': " + why.text);
        if (!ReopenDeclareChannel(error)) return false;
        continue;
      }
      AmqpEvent event;
      event.type = AmqpEvent::Type::kQueueStats;
      event.generation = generation_;
      event.queue = queue;
      event.messages = ok->message_count;
      event.consumers = ok->consumer_count;
      Emit(std::move(event));
    }
    // Keep looking while there is work; the look after the last activity
    // sets busy_ false for good.
    if (!settles_.empty()) busy_ = true;
    return true;
  }

  struct PendingSettle {
    uint64_t tag;
    AmqpOutcome outcome;
    std::string queue;
    int remaining;
    bool nacked;
  };

  AmqpServiceConfig config_;
  std::function<void()> wake_;
  std::thread thread_;
  int wake_fd_ = -1;
  std::mutex mutex_;  // commands_ and events_
  std::deque<AmqpCommand> commands_;
  std::deque<AmqpEvent> events_;
  std::mt19937 rng_;

  // The connection and the state below: the AMQP thread's, but for TryAck
  // on the loop thread, which may use them while it holds conn_mutex_.
  std::mutex conn_mutex_;
  std::unique_lock<std::mutex> conn_lock_{conn_mutex_, std::defer_lock};
  // A write (TryAck) or read (ReadDeliveries) of the loop thread failed:
  // the AMQP thread drops the connection.
  std::string loop_error_;
  // Who watches the socket for input: the loop while true (set by the AMQP
  // thread before it sleeps, cleared by the loop when it hands back), and
  // whether the loop may at all on this connection (plain TCP, a dup made,
  // the loop did not decline).
  std::atomic<bool> loop_watches_{false};
  std::atomic<uint64_t> declined_generation_{0};
  bool loop_may_read_ = false;
  std::vector<unsigned char> peek_ = std::vector<unsigned char>(kPeekBytes);
  amqp_connection_state_t conn_ = nullptr;
  bool connected_ = false;
  bool declare_channel_open_ = false;
  int heartbeat_ = 0;
  uint64_t generation_ = 0;
  std::map<std::string, std::string> consumers_;  // consumer tag -> queue
  bool stop_consuming_ = false;
  bool shutdown_ = false;
  Clock::time_point shutdown_deadline_{};
  uint64_t next_seq_ = 1;
  std::map<uint64_t, uint64_t> unconfirmed_;  // publish seq -> settle id
  uint64_t next_settle_ = 1;
  std::unordered_map<uint64_t, PendingSettle> settles_;
  // Delivery tags of this connection not yet acked or rejected, and acks
  // decided but not yet sent (FlushAcks).
  std::set<uint64_t> unsettled_;
  std::vector<uint64_t> pending_acks_;
  Clock::time_point last_rx_{};
  Clock::time_point next_stats_{};
  bool busy_ = false;
  AmqpRepeatFilter connect_log_{Duration(30000)};
};

AmqpSession::AmqpSession(AmqpServiceConfig config, std::function<void()> wake)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(wake))) {}
AmqpSession::~AmqpSession() = default;
void AmqpSession::Start() { impl_->Start(); }
void AmqpSession::Post(AmqpCommand command) { impl_->Post(std::move(command)); }
std::deque<AmqpEvent> AmqpSession::TakeEvents() { return impl_->TakeEvents(); }
void AmqpSession::Join() { impl_->Join(); }
AmqpLoopRead AmqpSession::ReadDeliveries(
    std::uint64_t generation, std::vector<std::unique_ptr<AmqpDelivery>>* out) {
  return impl_->ReadDeliveries(generation, out);
}
void AmqpSession::DeclineReads(std::uint64_t generation) {
  impl_->DeclineReads(generation);
}
AmqpFastAck AmqpSession::TryAck(std::uint64_t generation,
                                const std::vector<std::uint64_t>& tags) {
  return impl_->TryAck(generation, tags);
}

}  // namespace workerpool
