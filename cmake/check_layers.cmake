# cmake/check_layers.cmake — the project's layers, in dependency order:
#
#   core → kernels → autodiff → nn → data → experiments
#
# A file may include headers of its own layer and of the layers before it,
# never of a later one. Run as a build step (`cmake -P`, target check_layers,
# on which every layer library depends) whenever a source file changes: an
# upward #include fails the build with the file, the line and the rule.
# Each layer is also its own static library linking only the layers before
# it (CMakeLists.txt), so a call into a later layer fails to link.
#
#   cmake -DROOT=<source dir> [-DSTAMP=<file to touch on success>] -P cmake/check_layers.cmake
set(VMOER_LAYERS core kernels autodiff nn data experiments)
if(NOT ROOT)
  message(FATAL_ERROR "check_layers: pass -DROOT=<source dir>")
endif()
set(_errors "")
list(LENGTH VMOER_LAYERS _n)
math(EXPR _last "${_n} - 1")
foreach(_i RANGE ${_last})
  list(GET VMOER_LAYERS ${_i} _layer)
  file(GLOB_RECURSE _files "${ROOT}/${_layer}/*.h" "${ROOT}/${_layer}/*.cpp" "${ROOT}/${_layer}/*.cu"
       "${ROOT}/${_layer}/*.cuh")
  foreach(_f ${_files})
    file(STRINGS "${_f}" _lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"[a-z_]+/")
    foreach(_line ${_lines})
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([a-z_]+)/.*$" "\\1" _dir "${_line}")
      list(FIND VMOER_LAYERS "${_dir}" _j)
      if(_j GREATER _i)
        file(RELATIVE_PATH _rel "${ROOT}" "${_f}")
        string(STRIP "${_line}" _line)
        string(APPEND _errors "  ${_rel}: ${_line}  (${_layer} may not include ${_dir})\n")
      endif()
    endforeach()
  endforeach()
endforeach()
if(_errors)
  message(FATAL_ERROR "upward includes (layers: core → kernels → autodiff → nn → data → experiments):\n${_errors}")
endif()
if(STAMP)
  file(TOUCH "${STAMP}")
endif()
