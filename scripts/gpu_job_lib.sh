# A long job in the background of the device machine (bash, sourced by scripts/gpu_*.sh): the device tool hands the
# machine back 30 s after a call ends and a call lasts at most 10 minutes, so a run of 20 minutes is started in one
# call (setsid: it outlives the call's shell) and waited for in the next ones, back to back.
#   job_start NAME LOG CMD...   start CMD (its output appended to LOG) unless NAME's job is running already;
#                               /root/NAME.state says running / done (CMD's last step writes "done": see job_done)
#   job_done NAME               mark NAME's job finished (the job's own last command)
#   build_and_test B OUT        a CUDA build in B (scripts/gpu_check.sh build) unless B/dmc exists, then the kernels every
#                               run's training and evaluation take, tested on this GPU before any run uses them
#                               (1 when they fail, and B/dmc removed); exports DMC_POOL_TILED=0 on a machine where the
#                               tiled pooling kernels failed their test but the row-per-warp forms passed, and
#                               DMC_EVICT_GRAPHS=0 where the eviction baselines' graphed decode step failed its test,
#                               DMC_EVICT_DENSE=0 where the window's / TOVA's dense flash prefill did
#   job_wait NAME LOG N         return when the job ends or N seconds after the call began (T0), then its state and
#                               LOG's tail
job_alive() { [ -f "/root/$1.pid" ] && kill -0 "$(cat "/root/$1.pid")" 2>/dev/null; }
job_start() {
  local name=$1 log=$2; shift 2
  if job_alive "$name"; then
    echo "a job is running already (pid $(cat "/root/$name.pid"))"
  else
    echo running > "/root/$name.state"
    setsid nohup "$@" >> "$log" 2>&1 < /dev/null &
    echo $! > "/root/$name.pid"
    echo "job started (pid $!), log $log"
  fi
}
job_done() { echo done > "/root/$1.state"; }
job_wait() {
  local name=$1 log=$2 n=${3:-540} state
  while job_alive "$name" && [ $(( $(date +%s) - T0 )) -lt "$n" ]; do sleep 5; done
  state=$(cat "/root/$name.state" 2>/dev/null || echo none)
  [ "$state" = running ] && ! job_alive "$name" && state="ended without finishing"
  echo "job: $state after this call's $(( $(date +%s) - T0 )) s"
  tail -25 "$log"
}
build_and_test() {
  local b=$1 out=$2 rc
  if [ ! -x "$b/dmc" ]; then
    OUT="$out" scripts/gpu_check.sh build > "$out/build.log" 2>&1; echo "build rc=$? ($(( $(date +%s) - T0 )) s)"
    if ! timeout 60 "$b/dmc_tests" "CUDA: fused DMC pooling*" > "$out/gpu_pool_test.log" 2>&1; then
      DMC_POOL_TILED=0 timeout 60 "$b/dmc_tests" "CUDA: fused DMC pooling*" > "$out/gpu_pool_test_untiled.log" 2>&1 &&
        touch /root/pool_untiled && echo "tiled pooling failed its test: this machine's runs take DMC_POOL_TILED=0"
    fi
    [ -f /root/pool_untiled ] && export DMC_POOL_TILED=0
    # the eviction baselines' CUDA-graphed decode step against the eager one: their task sweeps decode eagerly
    # (DMC_EVICT_GRAPHS=0) where it fails
    if ! timeout 120 "$b/dmc_tests" "[evict-graphs]" > "$out/gpu_evict_graphs_test.log" 2>&1; then
      touch /root/evict_graphs_off && echo "eviction graphs failed their test: this machine's runs take DMC_EVICT_GRAPHS=0"
    fi
    # and the window's / TOVA's dense flash prefill against token-by-token eviction (DMC_EVICT_DENSE=0: the masked
    # form)
    if ! timeout 120 "$b/dmc_tests" "[evict-dense]" > "$out/gpu_evict_dense_test.log" 2>&1; then
      touch /root/evict_dense_off && echo "the dense eviction prefill failed its test: this machine's runs take DMC_EVICT_DENSE=0"
    fi
    timeout 120 "$b/dmc_tests" "[gpu][dmc]" > "$out/gpu_tests.log" 2>&1
    rc=$?; echo "GPU kernel tests rc=$rc: $(grep -E "^(All tests passed|test cases:)" "$out/gpu_tests.log" | tail -1)"
    [ $rc -eq 0 ] || { echo "GPU kernel tests failed (gpu_tests.log): no run started"; rm -f "$b/dmc"; return 1; }
  fi
  [ -f /root/pool_untiled ] && export DMC_POOL_TILED=0
  [ -f /root/evict_graphs_off ] && export DMC_EVICT_GRAPHS=0
  [ -f /root/evict_dense_off ] && export DMC_EVICT_DENSE=0
  return 0
}
