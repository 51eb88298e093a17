// Text helpers for the pool definition parser's messages: quoting, lists
// of alternatives, "did you mean" suggestions, and the check that a file is
// text at all. Pure functions of their arguments.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace workerpool::config_parser {

using Words = std::span<const std::string_view>;

// 'TEXT', as messages show a value from the file.
std::string Quote(std::string_view text);

// WORDS with SEPARATOR between them.
std::string Join(Words words, std::string_view separator);

// "a, b or c" for messages that list what is accepted.
std::string Alternatives(Words words);

// The candidate a typo most likely meant, or "" when none is close.
std::string_view NearestOf(std::string_view word, Words candidates);

// One or more decimal digits and nothing else.
bool IsDecimal(std::string_view text);

// Offset of the first byte that cannot be in a YAML text file: NUL, other
// control characters, or a malformed UTF-8 sequence. nullopt when all is text.
std::optional<std::size_t> FindNonTextByte(std::string_view text);

}  // namespace workerpool::config_parser
