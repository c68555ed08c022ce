# sftgo_loss_reference: the loss test oracle (reference_loss.h), linked by the loss tests,
# loss_tool and bench_loss only. Included from tests/loss and bench/loss (either may be off).
if(NOT TARGET sftgo_loss_reference)
  add_library(sftgo_loss_reference STATIC ${CMAKE_CURRENT_LIST_DIR}/reference_loss.cpp)
  target_include_directories(sftgo_loss_reference PUBLIC ${CMAKE_CURRENT_LIST_DIR})
  target_compile_options(sftgo_loss_reference PRIVATE -Wall -Wextra -Wno-unused-parameter)
  target_link_libraries(sftgo_loss_reference PUBLIC sftgo_loss)
  _sftgo_use_torch(sftgo_loss_reference)
endif()
