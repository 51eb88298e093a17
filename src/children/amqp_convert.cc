#include "children/amqp_convert.h"

#include <algorithm>
#include <cstring>
#include <optional>

namespace workerpool::amqp {
namespace {

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

// TEXT copied into POOL.
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

}  // namespace

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

namespace {

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
      out->value.table = amqp::ToAmqp(in.table, pool);
      break;
    default:
      out->kind = AMQP_FIELD_KIND_VOID;
      break;
  }
}

}  // namespace

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

}  // namespace workerpool::amqp
