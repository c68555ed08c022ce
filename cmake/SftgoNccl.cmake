# NCCL for a CUDA build: the headers must be the torch wheel's own (site-packages/nvidia/nccl/include),
# at exactly the version of the libnccl that libtorch_cuda loads. A CUDA toolkit has no nccl.h of its
# own, and another version's header can change the layout of c10d::ProcessGroupNCCL::Options against
# libtorch_cuda, so a missing or different header stops the configure instead of silently building
# without NCCL (or with the wrong one).
#
# Included by SftgoDependencies.cmake. Also runs as a script, which is how tests/python/test_gpu_check.py
# checks the decision without a CUDA toolkit:
#   cmake -DNCCL_INCLUDE_DIR=DIR -DNCCL_EXPECTED_VERSION=2.28.9 -P cmake/SftgoNccl.cmake
# prints "sftgo: NCCL <version> from DIR" and exits 0, or stops with the error a configure would give.

# "MAJOR.MINOR.PATCH" from the NCCL_MAJOR/MINOR/PATCH defines of `header`, or "" when one is missing.
function(sftgo_nccl_header_version header out_var)
  set(_ver "")
  if(EXISTS "${header}")
    file(STRINGS "${header}" _lines REGEX "^#define NCCL_(MAJOR|MINOR|PATCH)[ \t]+[0-9]+")
    set(_parts "")
    foreach(_part MAJOR MINOR PATCH)
      set(_found "")
      foreach(_line IN LISTS _lines)
        if(_line MATCHES "^#define NCCL_${_part}[ \t]+([0-9]+)")
          set(_found "${CMAKE_MATCH_1}")
        endif()
      endforeach()
      if(_found STREQUAL "")
        set(_parts "")
        break()
      endif()
      list(APPEND _parts "${_found}")
    endforeach()
    list(LENGTH _parts _n)
    if(_n EQUAL 3)
      string(REPLACE ";" "." _ver "${_parts}")
    endif()
  endif()
  set(${out_var} "${_ver}" PARENT_SCOPE)
endfunction()

# Checks the NCCL headers in `include_dir` against `expected_version` (the torch wheel's NCCL, as
# torch.cuda.nccl.version() reports it) and sets SFTGO_NCCL_VERSION in the caller; a fatal error
# saying what to do otherwise.
function(sftgo_check_nccl include_dir expected_version)
  if(include_dir STREQUAL "" OR NOT EXISTS "${include_dir}/nccl.h")
    message(FATAL_ERROR
      "sftgo: CUDA is on but NCCL's nccl.h was not found (looked in '${include_dir}'). The torch wheel's "
      "NCCL headers come with its nvidia-nccl package (site-packages/nvidia/nccl/include): reinstall the "
      "pinned torch wheel (scripts/setup.sh), pass -DSFTGO_NCCL_INCLUDE_DIR=<dir with nccl.h> of the same "
      "version, or build without CUDA (-DSFTGO_CUDA=OFF).")
  endif()
  sftgo_nccl_header_version("${include_dir}/nccl.h" _ver)
  if(_ver STREQUAL "")
    message(FATAL_ERROR "sftgo: ${include_dir}/nccl.h has no NCCL_MAJOR/NCCL_MINOR/NCCL_PATCH defines: not an NCCL header")
  endif()
  if(expected_version STREQUAL "")
    message(FATAL_ERROR
      "sftgo: could not ask torch which NCCL it loads (torch.cuda.nccl.version() with the venv's python failed). "
      "Pass -DPython3_EXECUTABLE=<python with the pinned torch> or -DSFTGO_NCCL_EXPECTED_VERSION=X.Y.Z.")
  endif()
  if(NOT _ver STREQUAL expected_version)
    message(FATAL_ERROR
      "sftgo: ${include_dir}/nccl.h is NCCL ${_ver} but the torch wheel loads NCCL ${expected_version}. A different "
      "header can change the layout of ProcessGroupNCCL's options against libtorch_cuda. Use the wheel's headers "
      "(site-packages/nvidia/nccl/include, the default) or pass -DSFTGO_NCCL_INCLUDE_DIR=<headers of NCCL ${expected_version}>.")
  endif()
  set(SFTGO_NCCL_VERSION "${_ver}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  sftgo_check_nccl("${NCCL_INCLUDE_DIR}" "${NCCL_EXPECTED_VERSION}")
  message("sftgo: NCCL ${SFTGO_NCCL_VERSION} from ${NCCL_INCLUDE_DIR}")
endif()
