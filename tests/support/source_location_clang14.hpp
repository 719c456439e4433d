// std::source_location for clang 14 with libstdc++ 12 (the asan preset):
// libstdc++'s <source_location> needs __builtin_source_location, which
// clang has only from 15, and then declares nothing. tests/CMakeLists.txt
// force-includes this header for clang < 15 only; it is the pattern
// libstdc++'s and libc++'s experimental::source_location used (the builtins
// as default arguments report the outermost caller's location).
// Build plumbing, not test code: with gcc or a newer clang it is never seen.
#pragma once

#if defined(__clang__) && __clang_major__ < 15
#include <source_location>  // first, so its (empty) body is not parsed after this one

namespace std {  // NOLINT(cert-dcl58-cpp): supplies what the library leaves out for this compiler
struct source_location {
  static constexpr source_location current(const char* file = __builtin_FILE(),
                                           const char* function = __builtin_FUNCTION(),
                                           unsigned line = __builtin_LINE(),
                                           unsigned column = __builtin_COLUMN()) noexcept {
    source_location here;
    here.file_ = file;
    here.function_ = function;
    here.line_ = line;
    here.column_ = column;
    return here;
  }
  constexpr source_location() noexcept = default;
  constexpr unsigned line() const noexcept { return line_; }
  constexpr unsigned column() const noexcept { return column_; }
  constexpr const char* file_name() const noexcept { return file_; }
  constexpr const char* function_name() const noexcept { return function_; }

 private:
  const char* file_ = "";
  const char* function_ = "";
  unsigned line_ = 0;
  unsigned column_ = 0;
};
}  // namespace std
#endif
