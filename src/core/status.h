// Expected failures as values. A Status is ok or carries one line a person
// can act on; Result<T> is a T or a Status. Nothing here throws.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace workerpool {

class Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(std::string message) {
    Status s;
    s.ok_ = false;
    s.message_ = std::move(message);
    return s;
  }

  bool ok() const { return ok_; }
  // One line naming what was wrong and where; empty when ok().
  const std::string& message() const { return message_; }

 private:
  bool ok_ = true;
  std::string message_;
};

template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}       // NOLINT: implicit
  Result(Status error) : value_(std::move(error)) {}  // NOLINT: implicit

  bool ok() const { return std::holds_alternative<T>(value_); }
  // REQUIRES: ok().
  T& value() { return std::get<T>(value_); }
  const T& value() const { return std::get<T>(value_); }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  // The error; an ok Status when ok().
  Status status() const {
    return ok() ? Status::Ok() : std::get<Status>(value_);
  }

 private:
  std::variant<T, Status> value_;
};

}  // namespace workerpool
