// Test kit: a reactor that turns lines on a Unix socket into pool requests,
// so integration tests can drive routing without HTTP.
//
// Listens on $KIT_SOCKET (plus ".INDEX" when WORKERPOOL_INDEX is not 0).
// Requests, one per line (payloads have no newline):
//   ID send GROUP PAYLOAD            -> "ID ok BODY" | "ID error CODE TEXT"
//   ID sendp GROUP PRIORITY PAYLOAD  (same, with a priority)
//   ID cancel OTHER_ID               (cancels request OTHER_ID of this line)
//   ID flood GROUP COUNT WINDOW PAYLOAD
//        sends PAYLOAD COUNT times, WINDOW in flight, each next one as soon
//        as an answer comes -> "ID ok COUNT" once all came back with
//        PAYLOAD, or "ID error CODE TEXT" for the first that did not (no
//        more are sent then)
// Progress updates arrive as "ID progress FRACTION TEXT".
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "workerpool/client.h"

namespace {

using workerpool::PoolClient;

PoolClient* g_client = nullptr;

struct Connection {
  uv_pipe_t pipe;
  std::string buffer;
  std::map<std::string, uint64_t> ids;  // line id -> request id
  bool closed = false;
  int pending = 0;
};

void WriteLine(Connection* connection, const std::string& line) {
  if (connection->closed) return;
  auto* request = new uv_write_t;
  auto* text = new std::string(line + "\n");
  request->data = text;
  uv_buf_t buf = uv_buf_init(text->data(), text->size());
  uv_write(request, reinterpret_cast<uv_stream_t*>(&connection->pipe), &buf, 1,
           [](uv_write_t* req, int) {
             delete static_cast<std::string*>(req->data);
             delete req;
           });
}

void MaybeDelete(Connection* connection) {
  if (connection->closed && connection->pending == 0) delete connection;
}

// One flood command: a window of requests kept full until COUNT were sent.
struct Flood {
  Connection* connection;
  std::string id, group, payload;
  long to_send = 0, inflight = 0, answered = 0;
  std::string failure;  // the first bad answer, as "CODE TEXT"
};

void SendFloodRequest(const std::shared_ptr<Flood>& flood) {
  --flood->to_send;
  ++flood->inflight;
  ++flood->connection->pending;
  g_client->Send(
      flood->group, flood->payload, [flood](workerpool::Reply reply) {
        --flood->inflight;
        --flood->connection->pending;
        if (!reply.ok && flood->failure.empty()) {
          flood->failure =
              std::to_string(static_cast<int>(reply.code)) + " " + reply.body;
        } else if (reply.ok && reply.body != flood->payload &&
                   flood->failure.empty()) {
          flood->failure = "0 wrong body '" + reply.body + "'";
        }
        ++flood->answered;
        if (flood->failure.empty() && flood->to_send > 0) {
          SendFloodRequest(flood);
        } else if (flood->inflight == 0) {
          WriteLine(flood->connection,
                    flood->id + (flood->failure.empty()
                                     ? " ok " + std::to_string(flood->answered)
                                     : " error " + flood->failure));
        }
        MaybeDelete(flood->connection);
      });
}

void HandleLine(Connection* connection, const std::string& line) {
  std::istringstream in(line);
  std::string id, verb;
  in >> id >> verb;
  if (verb == "send" || verb == "sendp") {
    std::string group;
    int priority = 0;
    in >> group;
    if (verb == "sendp") in >> priority;
    std::string payload;
    std::getline(in, payload);
    if (!payload.empty() && payload[0] == ' ') payload.erase(0, 1);
    workerpool::SendOptions options;
    options.priority = priority;
    options.on_progress = [connection, id](const workerpool::Progress& p) {
      WriteLine(connection,
                id + " progress " + std::to_string(p.fraction) + " " + p.text);
    };
    ++connection->pending;
    connection->ids[id] = g_client->Send(
        group, payload,
        [connection, id](workerpool::Reply reply) {
          --connection->pending;
          if (reply.ok) {
            WriteLine(connection, id + " ok " + reply.body);
          } else {
            WriteLine(connection,
                      id + " error " +
                          std::to_string(static_cast<int>(reply.code)) + " " +
                          reply.body);
          }
          MaybeDelete(connection);
        },
        std::move(options));
  } else if (verb == "flood") {
    auto flood = std::make_shared<Flood>();
    long window = 0;
    flood->connection = connection;
    flood->id = id;
    in >> flood->group >> flood->to_send >> window >> flood->payload;
    if (!in || flood->to_send < 1 || window < 1) {
      WriteLine(connection, id + " error 0 usage: flood GROUP COUNT WINDOW "
                                 "PAYLOAD");
      return;
    }
    for (long i = 0; i < window && flood->to_send > 0; ++i) {
      SendFloodRequest(flood);
    }
  } else if (verb == "cancel") {
    std::string other;
    in >> other;
    auto found = connection->ids.find(other);
    if (found != connection->ids.end()) g_client->Cancel(found->second);
  } else {
    WriteLine(connection, id + " error 0 unknown verb '" + verb + "'");
  }
}

void OnConnection(uv_stream_t* server, int status) {
  if (status != 0) return;
  auto* connection = new Connection;
  uv_pipe_init(server->loop, &connection->pipe, 0);
  connection->pipe.data = connection;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&connection->pipe)) !=
      0) {
    delete connection;
    return;
  }
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&connection->pipe),
      [](uv_handle_t*, size_t size, uv_buf_t* buf) {
        *buf = uv_buf_init(new char[size], size);
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
        auto* connection = static_cast<Connection*>(stream->data);
        if (nread < 0) {
          connection->closed = true;
          uv_close(reinterpret_cast<uv_handle_t*>(stream), [](uv_handle_t* h) {
            MaybeDelete(static_cast<Connection*>(h->data));
          });
        } else {
          connection->buffer.append(buf->base, nread);
          size_t newline;
          while ((newline = connection->buffer.find('\n')) !=
                 std::string::npos) {
            std::string line = connection->buffer.substr(0, newline);
            connection->buffer.erase(0, newline + 1);
            HandleLine(connection, line);
          }
        }
        delete[] buf->base;
      });
}

}  // namespace

int main() {
  std::string error;
  auto client = PoolClient::FromEnvironment(nullptr, &error);
  if (!client) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  g_client = client.get();
  const char* base = std::getenv("KIT_SOCKET");
  if (base == nullptr) {
    std::fprintf(stderr, "line_reactor: KIT_SOCKET is not set\n");
    return 2;
  }
  std::string path = base;
  if (client->index() != 0) path += "." + std::to_string(client->index());
  unlink(path.c_str());
  uv_pipe_t server;
  uv_pipe_init(client->loop(), &server, 0);
  if (uv_pipe_bind(&server, path.c_str()) != 0 ||
      uv_listen(reinterpret_cast<uv_stream_t*>(&server), 64, OnConnection) !=
          0) {
    std::fprintf(stderr, "line_reactor: cannot listen on %s\n", path.c_str());
    return 2;
  }
  client->OnStop([&server] {
    uv_close(reinterpret_cast<uv_handle_t*>(&server), nullptr);
  });
  std::printf("line_reactor listening on %s\n", path.c_str());
  std::fflush(stdout);
  return client->Run();
}
