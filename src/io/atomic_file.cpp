#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "mamba2/error.h"

namespace mamba2 {

AtomicFile::AtomicFile(const std::filesystem::path& path, std::string op)
    : path_(path), tmp_(path.string() + ".tmp." + std::to_string(::getpid())), op_(std::move(op)) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{} {}: cannot create {}: {}", op_, path_.string(), tmp_.string(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("{} {}: write failed: {}", op_, path_.string(), std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail("{} {}: fsync failed: {}", op_, path_.string(), std::strerror(errno));
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail("{} {}: close failed: {}", op_, path_.string(), std::strerror(errno));
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail("{} {}: rename from {} failed: {}", op_, path_.string(), tmp_.string(), std::strerror(errno));
  committed_ = true;
  // Persist the rename itself; failure here cannot un-write the file, so it is not an error.
  auto dir = path_.parent_path().empty() ? std::filesystem::path(".") : path_.parent_path();
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace mamba2
