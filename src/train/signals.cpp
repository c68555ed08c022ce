#include <atomic>
#include <csignal>
#include <cstdlib>
#include <unistd.h>

#include "sftgo/train/trainer.h"

namespace sftgo::train {
namespace {
std::atomic<int> g_signals{0};

void on_signal(int sig) {
  // First signal: finish the step, save, exit cleanly. Second: leave now (the last complete
  // checkpoint on disk stays intact because saves are atomic).
  if (g_signals.fetch_add(1) >= 1) {
    const char msg[] = "\nsftgo-train: second signal, exiting without saving\n";
    (void)!::write(2, msg, sizeof msg - 1);
    std::_Exit(128 + sig);
  }
  const char msg[] = "\nsftgo-train: stop requested; saving a checkpoint after this step (signal again to exit now)\n";
  (void)!::write(2, msg, sizeof msg - 1);
}
}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // mpirun forwards SIGUSR1 to every rank at once (it refuses to forward SIGINT/SIGTERM and kills
  // the ranks after odls_base_sigkill_timeout instead), so `kill -USR1 <mpirun pid>` stops a job
  // gracefully whatever that timeout is.
  sigaction(SIGUSR1, &sa, nullptr);
}

bool stop_requested() { return g_signals.load() > 0; }
void request_stop() { g_signals.fetch_add(1); }
void clear_stop_request() { g_signals.store(0); }

}  // namespace sftgo::train
