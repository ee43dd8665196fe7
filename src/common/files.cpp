#include "common/files.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/util.h"

namespace dmc {

namespace {
std::atomic<int> g_tmp_counter{0};

std::string errno_text() { return std::strerror(errno); }

std::string dir_of(const std::string& abs) {
  const size_t s = abs.rfind('/');
  return s == 0 ? "/" : abs.substr(0, s);
}
std::string base_of(const std::string& abs) { return abs.substr(abs.rfind('/') + 1); }

// "<dir>/.<base>.<tag>-<pid>-<n>": beside the target, hidden, unique in this process
std::string sibling(const std::string& abs, const std::string& tag) {
  return cat(dir_of(abs), dir_of(abs) == "/" ? "" : "/", ".", base_of(abs), ".", tag, "-", ::getpid(), "-",
             g_tmp_counter.fetch_add(1));
}

// write(2) until all n bytes are out; an error names `path`
void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail(path, ": write failed (", w < 0 ? errno_text() : std::string("no progress"), ")");
    p += w;
    n -= (size_t)w;
  }
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists_nofollow(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}
}  // namespace

// ---- files --------------------------------------------------------------------------------------------------

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  const std::string abs = absolute_path(path);
  if (is_dir(abs)) fail(path, ": is a directory, expected a file to write");
  tmp_ = sibling(abs, "tmp");
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path, ": cannot open for writing (", errno_text(), ")");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) fail(path_, ": write after commit");
  write_all(fd_, data, n, path_);
}

void AtomicFile::commit() {
  if (fd_ < 0) fail(path_, ": committed twice");
  const int fd = fd_;
  fd_ = -1;
  const bool synced = ::fsync(fd) == 0;
  const int sync_errno = errno;
  const bool closed = ::close(fd) == 0;
  if (!synced || !closed) {
    const std::string why = std::strerror(synced ? errno : sync_errno);
    ::unlink(tmp_.c_str());
    fail(path_, ": write failed (", why, ")");
  }
  if (::rename(tmp_.c_str(), absolute_path(path_).c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp_.c_str());
    fail(path_, ": cannot move the finished file into place (", why, ")");
  }
  fsync_path(dir_of(absolute_path(path_)));
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

void AppendFile::open(const std::string& path) {
  if (fd_ >= 0) ::close(fd_);
  path_ = path;
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path, ": cannot open for appending (", errno_text(), ")");
}

void AppendFile::append(const std::string& record) {
  if (fd_ >= 0) write_all(fd_, record.data(), record.size(), path_);
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

// ---- paths --------------------------------------------------------------------------------------------------

std::string absolute_path(const std::string& path) {
  std::string a = path.empty() ? "." : path;
  if (a[0] != '/') {
    char buf[PATH_MAX];
    if (!::getcwd(buf, sizeof buf)) fail("cannot read the working directory (", errno_text(), ")");
    a = std::string(buf) + "/" + a;
  }
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos <= a.size()) {
    size_t s = a.find('/', pos);
    if (s == std::string::npos) s = a.size();
    parts.push_back(a.substr(pos, s - pos));
    pos = s + 1;
  }
  std::string out = "/";
  bool resolving = true;  // while the prefix exists, follow its links (realpath); past it, lexical only
  for (const auto& c : parts) {
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      out = dir_of(out == "/" ? std::string("/x") : out);
      continue;
    }
    std::string next = out == "/" ? "/" + c : out + "/" + c;
    if (resolving) {
      char buf[PATH_MAX];
      if (::realpath(next.c_str(), buf))
        next = buf;
      else
        resolving = false;
    }
    out = next;
  }
  return out;
}

bool path_within(const std::string& inner, const std::string& outer) {
  const std::string i = absolute_path(inner), o = absolute_path(outer);
  if (o == "/") return true;
  return i == o || (i.size() > o.size() && i.compare(0, o.size(), o) == 0 && i[o.size()] == '/');
}

void make_dirs(const std::string& path) {
  const std::string abs = absolute_path(path);
  if (is_dir(abs)) return;
  if (abs != "/") make_dirs(dir_of(abs));
  if (::mkdir(abs.c_str(), 0755) != 0 && errno != EEXIST) fail(path, ": cannot create directory (", errno_text(), ")");
  if (!is_dir(abs)) fail(path, ": exists and is not a directory");
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void rename_path(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) fail("cannot rename ", from, " to ", to, " (", errno_text(), ")");
}

void check_output_target(const std::string& target, bool overwrite, const std::vector<std::string>& inputs,
                         const std::string& what) {
  if (target.empty()) fail(what, ": empty path");
  const std::string abs = absolute_path(target);
  for (const auto& in : inputs) {
    if (in.empty()) continue;
    const std::string ia = absolute_path(in);
    if (ia == abs) fail(what, " '", target, "' is the input ", in, " (write the output elsewhere)");
    if (path_within(ia, abs)) fail(what, " '", target, "' contains the input ", in, " (write the output elsewhere)");
    if (path_within(abs, ia) && is_dir(ia))
      fail(what, " '", target, "' lies inside the input ", in, " (write the output elsewhere)");
  }
  if (!exists_nofollow(abs)) return;
  if (!overwrite) fail(what, " '", target, "' already exists (pass --overwrite to replace it)");
  char buf[PATH_MAX];
  const std::string cwd = ::getcwd(buf, sizeof buf) ? absolute_path(buf) : "/";
  const char* home = std::getenv("HOME");
  if (abs == "/") fail(what, " '", target, "': refusing to replace the root directory");
  if (home && *home && abs == absolute_path(home))
    fail(what, " '", target, "': refusing to replace the home directory");
  if (path_within(cwd, abs))
    fail(what, " '", target, "': refusing to replace the working directory ", cwd,
         abs == cwd ? std::string() : std::string(" or a directory above it"));
}

// ---- output directories -------------------------------------------------------------------------------------

OutputDir::OutputDir(const std::string& target, bool overwrite, const std::vector<std::string>& inputs,
                     const std::string& what)
    : target_(absolute_path(target)) {
  check_output_target(target, overwrite, inputs, what);
  if (exists_nofollow(target_) && !is_dir(target_)) fail(what, " '", target, "' exists and is not a directory");
  make_dirs(dir_of(target_));
  staging_ = sibling(target_, "staging");
  if (::mkdir(staging_.c_str(), 0755) != 0) fail(what, ": cannot create ", staging_, " (", errno_text(), ")");
}

OutputDir::~OutputDir() {
  if (!done_) remove_tree(staging_);
}

void OutputDir::commit() {
  if (done_) fail(target_, ": committed twice");
  move_into_place(staging_, target_);
  done_ = true;
}

void move_into_place(const std::string& staging, const std::string& target) {
  fsync_path(staging);
  if (!exists_nofollow(target)) {
    rename_path(staging, target);
  } else {
    // exchange in one step where the kernel and file system allow it; else move the old aside first
#if defined(RENAME_EXCHANGE)
    const bool exchanged = ::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0;
#else
    const bool exchanged = false;
#endif
    if (exchanged) {
      remove_tree(staging);  // now holds the old output
    } else {
      const std::string old = sibling(absolute_path(target), "old");
      rename_path(target, old);
      try {
        rename_path(staging, target);
      } catch (...) {
        ::rename(old.c_str(), target.c_str());
        throw;
      }
      remove_tree(old);
    }
  }
  fsync_path(dir_of(absolute_path(target)));
}

// ---- locks --------------------------------------------------------------------------------------------------

DirLock::DirLock(const std::string& dir, const std::string& what) {
  make_dirs(dir);
  const std::string p = dir + "/" + lock_name();
  fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(p, ": cannot open the lock file (", errno_text(), ")");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[64] = {0};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    std::string holder = n > 0 ? std::string(buf, (size_t)n) : std::string("?");
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    ::close(fd_);
    fd_ = -1;
    fail(what, " '", dir, "' is in use by another dmc process (pid ", holder, ", lock ", p,
         "); wait for it to finish or use another directory");
  }
  const std::string pid = cat(::getpid(), "\n");
  if (::ftruncate(fd_, 0) == 0) {
    const ssize_t w = ::pwrite(fd_, pid.data(), pid.size(), 0);
    (void)w;
  }
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace dmc
