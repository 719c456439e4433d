// The two db::Database implementations, opened by db::open.
#pragma once

#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "p2pshare/db.hpp"

namespace p2pshare::db {

std::unique_ptr<Database> open_sqlite(const std::filesystem::path& path, std::string label,
                                      std::span<const Migration> steps);
std::unique_ptr<Database> open_postgresql(const std::string& url, std::string label, std::span<const Migration> steps);

}  // namespace p2pshare::db
