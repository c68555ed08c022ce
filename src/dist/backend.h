// Internal to src/dist: the c10d objects behind Comm and Work.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "sftgo/dist/dist.h"

namespace sftgo::dist {

struct Comm::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  std::string store_addr;
  std::chrono::milliseconds timeout{600000};
  bool loopback = false;  // Gloo binds to 127.0.0.1
  std::thread watchdog;
  std::atomic<bool> stop_watchdog{false};
  ~Impl();
};

struct Work::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  Comm* comm = nullptr;
  std::string what;
};

// Defined in nccl.cpp; returns nullptr when this build has no NCCL process group.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                                    std::chrono::milliseconds timeout);
bool nccl_available();

}  // namespace sftgo::dist
