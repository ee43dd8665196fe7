// Every file and directory dmc writes goes through here, so that no output is ever half-written, no error is
// silent and no replaced output is lost before its successor is complete:
//   - AtomicFile: bytes go to a temporary file beside the target; commit() flushes, fsyncs, closes, checks and
//     renames it into place (then fsyncs the directory). A full disk or an I/O error is a dmc::Error naming the
//     file and the cause; an AtomicFile destroyed without commit() leaves nothing behind.
//   - AppendFile: append-only logs (metrics.jsonl): every record written whole and checked.
//   - OutputDir: a new output directory built beside its target (a sibling staging directory) and swapped in
//     when complete; the old output is removed only after the swap. Before anything is written it refuses an
//     output that exists (without overwrite), that is / , the home or working directory (or one of their
//     ancestors) when it would be replaced, or that is, contains or lies inside one of the command's inputs.
//   - DirLock: an exclusive flock on DIR/.lock, so two processes never write one run directory.
// Rule (tests/test_hardening.cpp greps for it): no std::ofstream, fopen(..., "w") or popen/system in src/
// outside this file's implementation.
//
//   AtomicFile f(path);  f.write(bytes);  f.commit();      // or write_file_atomic(path, bytes)
//   OutputDir out(target, overwrite, {input_dir}, "output model directory");
//   ... write into out.staging() ...;  out.commit();
#pragma once
#include <string>
#include <vector>

namespace dmc {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// Whole file, atomically (AtomicFile).
void write_file_atomic(const std::string& path, const std::string& bytes);

class AppendFile {
 public:
  AppendFile() = default;
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  void open(const std::string& path);  // creates or appends
  void append(const std::string& record);
  bool is_open() const { return fd_ >= 0; }

 private:
  std::string path_;
  int fd_ = -1;
};

// Absolute, lexically normal path ('.', '..' and repeated or trailing '/' gone) with the symbolic links of its
// existing prefix resolved; the path itself need not exist.
std::string absolute_path(const std::string& path);
// True when `inner` is `outer` or lies below it (both taken through absolute_path).
bool path_within(const std::string& inner, const std::string& outer);
// mkdir -p; dmc::Error naming the path and the cause.
void make_dirs(const std::string& path);
// fsync of a file or directory (best effort: errors are ignored, as on file systems that cannot sync directories).
void fsync_path(const std::string& path);
// rename(2) with a dmc::Error naming both paths.
void rename_path(const std::string& from, const std::string& to);

// Puts the complete directory `staging` where `target` is (same file system): a plain rename when there is no
// target, else an atomic exchange (renameat2 RENAME_EXCHANGE) and removal of the old one; where exchange is not
// supported, the old target is renamed aside first and restored if the second rename fails.
void move_into_place(const std::string& staging, const std::string& target);

// The checks OutputDir makes, for outputs that are single files or file sets (e.g. a tokenizer prefix): refuses an
// existing target without overwrite, a protected directory, and a target that is, contains or lies inside an input.
void check_output_target(const std::string& target, bool overwrite, const std::vector<std::string>& inputs,
                         const std::string& what);

class OutputDir {
 public:
  OutputDir(const std::string& target, bool overwrite, const std::vector<std::string>& inputs, const std::string& what);
  ~OutputDir();  // not committed: the staging directory is removed, the target untouched
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;
  const std::string& staging() const { return staging_; }
  const std::string& target() const { return target_; }
  // Swaps the complete staging directory in (renameat2 RENAME_EXCHANGE where the file system has it), then removes
  // the old output.
  void commit();

 private:
  std::string target_, staging_;
  bool done_ = false;
};

class DirLock {
 public:
  // Creates `dir` if needed; dmc::Error if another process holds the lock (its pid in the message).
  DirLock(const std::string& dir, const std::string& what);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  static std::string lock_name() { return ".lock"; }

 private:
  int fd_ = -1;
};

}  // namespace dmc
