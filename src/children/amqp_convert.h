// Between librabbitmq's C types and workerpool's (core/amqp_message.h), and
// librabbitmq's replies as text, for rabbitmq-service. No I/O, no
// exceptions; safe on anything RabbitMQ sends. Any thread.
#pragma once

#include <amqp.h>

#include <string>

#include "core/amqp_message.h"

namespace workerpool::amqp {

// TEXT as librabbitmq bytes: a view, not a copy (TEXT must outlive it).
amqp_bytes_t Bytes(const std::string& text);
// A copy of BYTES; empty for null bytes.
std::string Text(amqp_bytes_t bytes);

// A message's properties as RabbitMQ sent them; a header of a kind AMQP
// 0-9-1 does not define reads as void ('V').
AmqpProperties FromAmqp(const amqp_basic_properties_t& in);
// The converse, allocated in POOL: the result is valid while POOL is.
amqp_basic_properties_t ToAmqp(const AmqpProperties& in, amqp_pool_t* pool);
// A field table (queue arguments, client properties), allocated in POOL.
amqp_table_t ToAmqp(const AmqpTable& in, amqp_pool_t* pool);

// Why an RPC (or a read) did not return normally.
struct RpcError {
  std::string text;  // one line: RabbitMQ's reply text, or librabbitmq's
  int code = 0;      // AMQP reply code of a server close, else 0
  bool channel_closed = false;     // RabbitMQ closed the channel
  bool connection_closed = false;  // RabbitMQ closed the connection
};
// REPLY described; "ok" for a normal reply.
RpcError DescribeReply(const amqp_rpc_reply_t& reply);

}  // namespace workerpool::amqp
