// Running another program without a shell: argv goes to posix_spawnp as it is (no word splitting, no globbing, no
// interpretation of user input), stdout and stderr are captured. dmc uses it for its Python helpers (tools/), e.g.
// the Megatron checkpoint reader, where torch's safe unpickler is the right tool.
//
//   ProcessResult r = run_program({python, script, "import", dir, out});
//   if (r.status != 0) fail(...r.err...);
#pragma once
#include <string>
#include <vector>

namespace dmc {

struct ProcessResult {
  int status = -1;  // exit status; 128 + signal when killed; -1 when it could not start
  std::string out, err;
};

// argv[0] is looked up in PATH when it has no '/'. dmc::Error when the program cannot be started.
ProcessResult run_program(const std::vector<std::string>& argv);

// The Python that runs dmc's helpers: $DMC_PYTHON, else the one dmc was built with (scripts/build.sh: the venv of
// scripts/setup.sh), else python3.
std::string helper_python();
// A helper script of tools/: $DMC_TOOLS_DIR/name, else the source tree's tools/ dmc was built from.
std::string helper_script(const std::string& name);

}  // namespace dmc
