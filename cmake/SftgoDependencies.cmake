# Every third-party dependency is found here, once. Debian packages provide all but LibTorch,
# which comes from the pinned PyPI torch wheel (scripts/setup.sh passes its CMake prefix).
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(spdlog REQUIRED)
find_package(yaml-cpp REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# CUDA: decided before Torch so that TorchConfig sees the same toolkit.
set(SFTGO_HAVE_CUDA OFF)
if(NOT SFTGO_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # nvcc 13 with CMake 3.25 knows no CUDA20 dialect; the kernels are C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(CMAKE_CUDA_EXTENSIONS OFF)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(SFTGO_HAVE_CUDA ON)
    # Stops Caffe2's cmake from probing for installed GPUs (a try_run that fails on GPU-less hosts).
    if(NOT DEFINED TORCH_CUDA_ARCH_LIST)
      set(TORCH_CUDA_ARCH_LIST "9.0")
    endif()
  elseif(SFTGO_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SFTGO_CUDA=ON but no CUDA compiler was found (set CUDACXX or CMAKE_CUDA_COMPILER)")
  endif()
endif()

# A CUDA build of LibTorch probes the installed GPUs with a try_run unless an arch list is given;
# that probe fails on GPU-less build hosts (and with nvcc 13 + CMake 3.25), CUDA kernels or not.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "9.0")
endif()
if(NOT SFTGO_HAVE_CUDA)
  # A CUDA build of LibTorch still configures without a toolkit once its CUDA probing is off.
  set(CAFFE2_USE_CUDA OFF CACHE BOOL "" FORCE)
  set(USE_CUDA OFF CACHE BOOL "" FORCE)
endif()
find_package(Torch 2.11 REQUIRED)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  set(SFTGO_TORCH_HAS_CUDA ON)
else()
  set(SFTGO_TORCH_HAS_CUDA OFF)
endif()
# TorchConfig appends its flags to CMAKE_CXX_FLAGS globally; keep them, they carry the ABI define.
if(SFTGO_HAVE_CUDA)
  # Set after TorchConfig, which warns about (and ignores) it; our own kernels use it.
  if(NOT DEFINED SFTGO_CUDA_ARCHITECTURES)
    set(SFTGO_CUDA_ARCHITECTURES 90)  # H100/H200, the GPUs this project runs on
  endif()
  set(CMAKE_CUDA_ARCHITECTURES ${SFTGO_CUDA_ARCHITECTURES})
endif()
message(STATUS "sftgo: LibTorch ${Torch_VERSION}, CUDA kernels ${SFTGO_HAVE_CUDA}")

find_package(MPI COMPONENTS CXX)
find_package(GTest)
