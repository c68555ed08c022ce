# The two helpers every CMakeLists in this repo uses: one for a module library, one for a test.

# One object that owns the precompiled LibTorch headers; torch targets reuse it so that the heavy
# headers are parsed once per build instead of once per translation unit. A PCH is only reused by
# targets compiled with the same flags: with CMAKE_POSITION_INDEPENDENT_CODE off (top-level
# CMakeLists.txt) libraries and executables agree, so one PCH serves both (two, one per PIC flag,
# cost ~50 s more CPU on every fresh build).
if(SFTGO_USE_PCH)
  add_library(sftgo_torch_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/torch_pch.cpp)
  target_link_libraries(sftgo_torch_pch PUBLIC ${TORCH_LIBRARIES})
  target_precompile_headers(sftgo_torch_pch PRIVATE <torch/torch.h>)
endif()

function(_sftgo_use_torch target)
  target_link_libraries(${target} PUBLIC ${TORCH_LIBRARIES})
  if(SFTGO_USE_PCH)
    target_precompile_headers(${target} REUSE_FROM sftgo_torch_pch)
  endif()
endfunction()

# sftgo_add_module(name SOURCES a.cpp ... [DEPS sftgo_core ...] [TORCH])
# Creates library sftgo_<name> from src/<name>/; public headers live in include/sftgo/<name>/.
function(sftgo_add_module name)
  cmake_parse_arguments(ARG "TORCH" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(sftgo_${name} STATIC ${ARG_SOURCES})
  target_include_directories(sftgo_${name} PUBLIC ${PROJECT_SOURCE_DIR}/include)
  target_compile_options(sftgo_${name} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  target_link_libraries(sftgo_${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  if(ARG_TORCH)
    _sftgo_use_torch(sftgo_${name})
  endif()
endfunction()

# sftgo_add_test(name SOURCES t.cpp ... [DEPS ...] [TORCH] [LABELS ...])
# One GoogleTest binary registered once with ctest; tests read ../shared via SFTGO_SHARED_DIR
# and the repo via SFTGO_SOURCE_DIR so they run from any working directory.
function(sftgo_add_test name)
  cmake_parse_arguments(ARG "TORCH" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  target_compile_options(${name} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(ARG_TORCH)
    _sftgo_use_torch(${name})
  endif()
  target_compile_definitions(${name} PRIVATE
    SFTGO_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    SFTGO_SHARED_DIR="${PROJECT_SOURCE_DIR}/../shared"
    SFTGO_BINARY_DIR="${PROJECT_BINARY_DIR}")
  add_test(NAME ${name} COMMAND ${name} --gtest_brief=1)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
endfunction()

# Build identity for version.cpp.in.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
  OUTPUT_VARIABLE SFTGO_GIT_HASH OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _git_rc)
if(NOT _git_rc EQUAL 0 OR NOT SFTGO_GIT_HASH)
  set(SFTGO_GIT_HASH unknown)
endif()
# Re-stamp the hash when HEAD moves (a commit, a checkout): otherwise `--version` and each run's
# versions.json would name the commit of the last configure.
if(EXISTS ${PROJECT_SOURCE_DIR}/.git/HEAD)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/.git/HEAD)
  file(READ ${PROJECT_SOURCE_DIR}/.git/HEAD _sftgo_head)
  if(_sftgo_head MATCHES "^ref: ([^\n]+)" AND EXISTS ${PROJECT_SOURCE_DIR}/.git/${CMAKE_MATCH_1})
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/.git/${CMAKE_MATCH_1})
  endif()
endif()
if(SFTGO_HAVE_CUDA)
  set(SFTGO_HAVE_CUDA_INT 1)
else()
  set(SFTGO_HAVE_CUDA_INT 0)
endif()
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
