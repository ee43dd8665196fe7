// The `dmc` subcommands. Each takes the arguments after its name and returns the exit status; bad input is
// reported by throwing dmc::Error, which main() prints before exiting with status 1.
#pragma once
#include <string>
#include <vector>

namespace dmc::cli {
using Args = std::vector<std::string>;
int cmd_info(const Args& a);
int cmd_init(const Args& a);
int cmd_convert(const Args& a);
int cmd_generate(const Args& a);
int cmd_eval(const Args& a);
int cmd_tokenizer(const Args& a);
int cmd_tokenize(const Args& a);
int cmd_data(const Args& a);
int cmd_train(const Args& a);
int cmd_retrofit(const Args& a);
int cmd_report(const Args& a);
int cmd_bench(const Args& a);
int cmd_serve(const Args& a);

}  // namespace dmc::cli
