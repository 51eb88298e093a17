// The shared listener and connection lifetimes (src/os/stream_server.h)
// over real sockets, with a small test protocol: garbage, clients that leave
// mid-request or mid-answer, many clients at once, timeouts, and closing the
// server while connections are open. Every test ends with no session left
// and the loop empty (LoopThread::Finish returns only then), which is what
// the ASan build checks for leaks.
#include "os/stream_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "control_test_support.h"
#include "os/listen_socket.h"
#include "os/uv_owner.h"

namespace workerpool::testing {
namespace {

using Framing = StreamServerOptions::Framing;

std::atomic<int> live_sessions{0};
std::atomic<int> held_answers{0};
std::atomic<int> accepted_without_fd{0};  // counted on the loop thread

// The test protocol. kLine: "hold" is answered and held; "big" gets 8 MB;
// anything else is echoed as "line:<text>". kChunks: input is gathered
// until a '\n', then answered with "chunks:<bytes>". Too large and (when
// asked) timeouts get an answer; otherwise the server's defaults apply.
class TestSession : public StreamSession {
 public:
  struct Shared {
    Framing framing = Framing::kLine;
    bool answer_timeouts = false;
    bool refuse_at_accept = false;
    StreamServer* close_on_hold = nullptr;  // closed from the held callback
  };

  explicit TestSession(const Shared* shared) : shared_(shared) {
    ++live_sessions;
  }
  ~TestSession() override { --live_sessions; }

  void OnAccepted(StreamConnection& connection) override {
    if (connection.fd() < 0) ++accepted_without_fd;
    if (shared_->refuse_at_accept) connection.Answer("refused\n");
  }

  void OnInput(StreamConnection& connection, std::string_view input) override {
    if (shared_->framing == Framing::kChunks) {
      gathered_.append(input);
      if (gathered_.find('\n') != std::string::npos) {
        connection.Answer("chunks:" + std::to_string(gathered_.size()) + "\n");
      }
      return;
    }
    if (input == "hold") {
      StreamServer* server = shared_->close_on_hold;
      connection.AnswerAndHold("held\n", [server] {
        ++held_answers;
        if (server != nullptr) server->Close();
      });
      return;
    }
    if (input == "big") {
      connection.Answer(std::string(8 * 1024 * 1024, 'b'));
      return;
    }
    connection.Answer("line:" + std::string(input) + "\n");
  }

  void OnTooLarge(StreamConnection& connection) override {
    connection.Answer("too large\n");
  }

  void OnTimeout(StreamConnection& connection) override {
    if (shared_->answer_timeouts) connection.Answer("timeout\n");
  }

 private:
  const Shared* shared_;
  std::string gathered_;
};

bool WaitFor(const std::function<bool()>& condition, int timeout_ms = 10000) {
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// A StreamServer with the test protocol on a Unix socket (or TCP on
// 127.0.0.1), its loop on a thread.
struct Fixture {
  explicit Fixture(Framing framing, bool tcp = false,
                   std::size_t max_request_bytes = 1024,
                   uint64_t timeout_ms = 5000) {
    shared.framing = framing;
    live_sessions = 0;
    held_answers = 0;
    accepted_without_fd = 0;
    ListenAddress address;
    if (tcp) {
      address.kind = ListenAddress::Kind::kTcp;
      address.host = "127.0.0.1";
      address.port = 0;
    } else {
      address.kind = ListenAddress::Kind::kUnix;
      address.path = dir.path + "/stream.sock";
      address.mode = 0600;
    }
    Result<int> fd = BindListenSocket(address);
    REQUIRE_MESSAGE(fd.ok(), fd.status().message());
    if (tcp) {
      sockaddr_in bound{};
      socklen_t size = sizeof(bound);
      REQUIRE(getsockname(*fd, reinterpret_cast<sockaddr*>(&bound), &size) ==
              0);
      port = ntohs(bound.sin_port);
    } else {
      path = address.path;
    }
    StreamServerOptions options;
    options.name = "test server";
    options.framing = framing;
    options.max_request_bytes = max_request_bytes;
    options.timeout_ms = timeout_ms;
    auto started = StreamServer::Listen(&loop.loop, *fd, std::move(options),
                                        [this] { return MakeSession(); });
    REQUIRE_MESSAGE(started.ok(), started.status().message());
    server = std::move(*started);
  }
  ~Fixture() {
    Finish();
    CHECK(accepted_without_fd == 0);
  }

  std::unique_ptr<StreamSession> MakeSession() {
    return std::make_unique<TestSession>(&shared);
  }
  void Run() { loop.Run(); }
  // Closes the server on the loop thread and waits until the loop is empty.
  void Finish() {
    loop.Finish([this] { server.reset(); });
  }
  int Connect() {
    if (port == 0) return ConnectTo(path);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
        0) {
      close(fd);
      return -1;
    }
    return fd;
  }
  // Sends TEXT on a new connection, then EOF when SHUT_WRITE, and returns
  // everything the server said.
  std::string Exchange(const std::string& text, bool shut_write = false) {
    int fd = Connect();
    if (fd < 0) return "<connect failed>";
    SendText(fd, text);
    if (shut_write) shutdown(fd, SHUT_WR);
    std::string answer = ReadAll(fd);
    close(fd);
    return answer;
  }

  QuietLog quiet;
  TempDir dir;
  std::string path;
  int port = 0;
  TestSession::Shared shared;
  LoopThread loop;
  std::unique_ptr<StreamServer> server;
};

// A close that sends RST instead of FIN: the server's read fails.
void Reset(int fd) {
  linger option{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, sizeof(option));
  close(fd);
}

TEST_CASE("stream server: a line is answered, then the connection closes") {
  Fixture f(Framing::kLine);
  f.Run();
  CHECK(f.Exchange("hello\n") == "line:hello\n");
  // The client's EOF ends a line too.
  CHECK(f.Exchange("no newline", true) == "line:no newline\n");
  CHECK(f.Exchange("first\nsecond\n") == "line:first\n");
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: garbage gets an answer and the server carries on") {
  Fixture f(Framing::kLine, false, 1024);
  f.Run();
  std::string binary;
  for (int i = 0; i < 512; ++i) binary.push_back(static_cast<char>(i * 7));
  binary.erase(std::remove(binary.begin(), binary.end(), '\n'), binary.end());
  CHECK(f.Exchange(binary + "\n") == "line:" + binary + "\n");
  // Over the bound without a newline, and with one.
  CHECK(f.Exchange(std::string(200 * 1024, 'x')) == "too large\n");
  CHECK(f.Exchange(std::string(1025, 'x') + "\n") == "too large\n");
  CHECK(f.Exchange(std::string(1024, 'x') + "\n") ==
        "line:" + std::string(1024, 'x') + "\n");
  CHECK(f.Exchange(std::string("\r\n\0\xff\n", 5)) == "line:\r\n");
  CHECK(f.Exchange("after\n") == "line:after\n");
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: chunks are bounded by the bytes before the answer") {
  Fixture f(Framing::kChunks, false, 1024);
  f.Run();
  CHECK(f.Exchange("abc\n") == "chunks:4\n");
  CHECK(f.Exchange(std::string(1024, '\0') + "\n") == "too large\n");
  CHECK(f.Exchange(std::string(100 * 1024, '\xff')) == "too large\n");
  // Cut short by the client's EOF: no answer.
  CHECK(f.Exchange("no end", true).empty());
  CHECK(f.Exchange("ok\n") == "chunks:3\n");
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: TCP connections are served alike") {
  Fixture f(Framing::kChunks, true);
  f.Run();
  REQUIRE(f.port != 0);
  CHECK(f.Exchange("over tcp\n") == "chunks:9\n");
  CHECK(f.Exchange(std::string(5000, 'y')) == "too large\n");
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: clients that leave mid-request cost nothing") {
  for (Framing framing : {Framing::kLine, Framing::kChunks}) {
    int framing_index = static_cast<int>(framing);
    CAPTURE(framing_index);
    Fixture f(framing);
    f.Run();
    for (int i = 0; i < 60; ++i) {
      int fd = f.Connect();
      REQUIRE(fd >= 0);
      if (i % 3 != 0) SendText(fd, "partial request");
      if (i % 2 == 0) {
        Reset(fd);
      } else {
        close(fd);
      }
    }
    CHECK(WaitFor([] { return live_sessions == 0; }));
    CHECK(f.Exchange("still here\n").find("\n") != std::string::npos);
    f.Finish();
    CHECK(live_sessions == 0);
  }
}

TEST_CASE("stream server: a client that leaves during a large answer") {
  Fixture f(Framing::kLine);
  f.Run();
  for (int i = 0; i < 10; ++i) {
    int fd = f.Connect();
    REQUIRE(fd >= 0);
    SendText(fd, "big\n");
    char some[100];
    if (i % 2 == 0) CHECK(recv(fd, some, sizeof(some), 0) > 0);
    Reset(fd);
  }
  CHECK(WaitFor([] { return live_sessions == 0; }));
  // A client that reads it all gets it all.
  CHECK(f.Exchange("big\n").size() == 8u * 1024 * 1024);
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: the client's EOF does not cut an answer short") {
  Fixture f(Framing::kLine);
  f.Run();
  // The EOF comes while 8 MB are still being written.
  CHECK(f.Exchange("big\n", true).size() == 8u * 1024 * 1024);
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: unread input does not lose the answer") {
  Fixture f(Framing::kLine);
  f.Run();
  int fd = f.Connect();
  REQUIRE(fd >= 0);
  // The request, then far more than the socket buffers hold: the server
  // must drain it, and its answer must not turn into a reset.
  SendText(fd, "hello\n" + std::string(4 * 1024 * 1024, 'z'));
  shutdown(fd, SHUT_WR);
  CHECK(ReadAll(fd) == "line:hello\n");
  close(fd);
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: many connections at once") {
  Fixture f(Framing::kLine);
  f.Run();
  constexpr int kClients = 300;
  std::vector<int> fds;
  for (int i = 0; i < kClients; ++i) {
    int fd = f.Connect();
    REQUIRE(fd >= 0);
    fds.push_back(fd);
  }
  CHECK(WaitFor([] { return live_sessions == kClients; }));
  for (int i = 0; i < kClients; ++i) {
    SendText(fds[i], "client " + std::to_string(i) + "\n");
  }
  for (int i = kClients - 1; i >= 0; --i) {
    CHECK(ReadAll(fds[i]) == "line:client " + std::to_string(i) + "\n");
    close(fds[i]);
  }
  CHECK(WaitFor([] { return live_sessions == 0; }));
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: closing with connections open frees them all") {
  Fixture f(Framing::kLine);
  f.Run();
  std::vector<int> fds;
  for (int i = 0; i < 30; ++i) {
    int fd = f.Connect();
    REQUIRE(fd >= 0);
    // Silent, mid-request, answered and held, answered but never read.
    if (i % 4 == 1) SendText(fd, "half a line");
    if (i % 4 == 2) SendText(fd, "hold\n");
    if (i % 4 == 3) SendText(fd, "big\n");
    fds.push_back(fd);
  }
  CHECK(WaitFor([] { return live_sessions == 30 && held_answers >= 7; }));
  f.Finish();
  CHECK(live_sessions == 0);
  // Every client sees the server gone.
  for (std::size_t i = 0; i < fds.size(); ++i) {
    std::string got = ReadAll(fds[i]);
    if (i % 4 == 2) CHECK(got == "held\n");
    if (i % 4 == 0 || i % 4 == 1) CHECK(got.empty());
    close(fds[i]);
  }
}

TEST_CASE("stream server: a held answer's callback may close the server") {
  Fixture f(Framing::kLine);
  f.shared.close_on_hold = f.server.get();
  f.Run();
  int other = f.Connect();
  REQUIRE(other >= 0);
  SendText(other, "half");
  int fd = f.Connect();
  REQUIRE(fd >= 0);
  SendText(fd, "hold\n");
  // The answer, then EOF: the callback closed the server.
  CHECK(ReadAll(fd) == "held\n");
  CHECK(ReadAll(other).empty());
  close(fd);
  close(other);
  CHECK(held_answers == 1);
  CHECK(WaitFor([] { return live_sessions == 0; }));
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: timeouts for the request and for the answer") {
  Fixture f(Framing::kLine, false, 1024, 100);
  f.Run();
  {
    // By default a client that says nothing is closed without an answer.
    int fd = f.Connect();
    REQUIRE(fd >= 0);
    CHECK(ReadAll(fd, 5000).empty());
    close(fd);
  }
  {
    // A client that never reads its answer nor closes is dropped.
    int fd = f.Connect();
    REQUIRE(fd >= 0);
    SendText(fd, "big\n");
    CHECK(WaitFor([] { return live_sessions == 0; }));
    close(fd);
  }
  f.Finish();
  CHECK(live_sessions == 0);
}

TEST_CASE("stream server: a session may answer a timeout or refuse at once") {
  SUBCASE("timeout") {
    Fixture f(Framing::kLine, false, 1024, 100);
    f.shared.answer_timeouts = true;
    f.Run();
    int fd = f.Connect();
    REQUIRE(fd >= 0);
    SendText(fd, "no newline yet");
    CHECK(ReadAll(fd, 5000) == "timeout\n");
    close(fd);
  }
  SUBCASE("refusal") {
    Fixture f(Framing::kLine);
    f.shared.refuse_at_accept = true;
    f.Run();
    CHECK(f.Exchange("hello\n") == "refused\n");
    f.Finish();
    CHECK(live_sessions == 0);
  }
}

TEST_CASE("stream server: what cannot be listened on is an error") {
  QuietLog quiet;
  LoopThread loop;
  auto factory = []() -> std::unique_ptr<StreamSession> { return nullptr; };
  CHECK(!StreamServer::Listen(&loop.loop, -1, {}, factory).ok());
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  close(pipe_fds[1]);
  // Not a socket; the server takes the fd over even so.
  CHECK(!StreamServer::Listen(&loop.loop, pipe_fds[0], {}, factory).ok());
  CHECK(fcntl(pipe_fds[0], F_GETFD) == -1);
  loop.Finish([] {});
}

TEST_CASE("stream server: a factory without a session closes the client") {
  QuietLog quiet;
  TempDir dir;
  ListenAddress address;
  address.kind = ListenAddress::Kind::kUnix;
  address.path = dir.path + "/none.sock";
  Result<int> fd = BindListenSocket(address);
  REQUIRE(fd.ok());
  LoopThread loop;
  auto started = StreamServer::Listen(
      &loop.loop, *fd, {},
      []() -> std::unique_ptr<StreamSession> { return nullptr; });
  REQUIRE(started.ok());
  std::unique_ptr<StreamServer> server = std::move(*started);
  loop.Run();
  CHECK(Exchange(address.path, "hello\n").empty());
  loop.Finish([&server] { server.reset(); });
}

TEST_CASE("Owner: a handle's data as its owner's type") {
  uv_timer_t timer;
  int owner = 7;
  timer.data = &owner;
  CHECK(Owner<int>(&timer) == &owner);
  CHECK(Owner<int>(reinterpret_cast<uv_handle_t*>(&timer)) == &owner);
  uv_write_t request;
  request.data = &owner;
  CHECK(Owner<int>(&request) == &owner);
}

}  // namespace
}  // namespace workerpool::testing
