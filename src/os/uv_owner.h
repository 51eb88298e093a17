// Owner<T>(handle): the object a libuv handle or request belongs to.
//
// Every libuv handle (uv_handle_t, uv_stream_t, uv_tcp_t, uv_timer_t, ...)
// and request (uv_write_t, uv_shutdown_t, ...) has a `void* data` that
// libuv never touches; the code that embeds the handle in an object sets
// data to that object, and a callback gets it back with Owner<T>. The cast
// is only as right as that assignment: T must be the type stored in data.
#pragma once

namespace workerpool {

template <typename T, typename Handle>
T* Owner(Handle* handle) {
  return static_cast<T*>(handle->data);
}

}  // namespace workerpool
