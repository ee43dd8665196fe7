// Running a helper program without a shell (see process.h).
#include "common/process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/util.h"
#include "dmc_paths.h"

extern char** environ;

namespace dmc {

namespace {
// a file to capture a stream in: created and unlinked at once (no name left behind)
int capture_fd() {
  char path[] = "/tmp/dmc-capture-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) fail("run_program: cannot create a capture file in /tmp: ", std::strerror(errno));
  unlink(path);
  return fd;
}
std::string read_all(int fd) {
  std::string s;
  lseek(fd, 0, SEEK_SET);
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) s.append(buf, (size_t)n);
  close(fd);
  return s;
}
}  // namespace

ProcessResult run_program(const std::vector<std::string>& argv) {
  DMC_CHECK(!argv.empty(), "run_program: no program");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int out_fd = capture_fd(), err_fd = capture_fd();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ProcessResult r;
  if (rc != 0) {
    close(out_fd);
    close(err_fd);
    fail("cannot start '", argv[0], "': ", std::strerror(rc));
  }
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  r.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : -1;
  r.out = read_all(out_fd);
  r.err = read_all(err_fd);
  return r;
}

std::string helper_python() {
  if (const char* p = std::getenv("DMC_PYTHON"); p && *p) return p;
  return DMC_BUILD_PYTHON[0] ? DMC_BUILD_PYTHON : "python3";
}

std::string helper_script(const std::string& name) {
  const char* d = std::getenv("DMC_TOOLS_DIR");
  const std::string path = std::string(d && *d ? d : DMC_SOURCE_TOOLS_DIR) + "/" + name;
  if (!file_exists(path))
    fail("helper script ", path, " not found (set DMC_TOOLS_DIR to the tools/ folder of the dmc source tree)");
  return path;
}

}  // namespace dmc
