# Install rules, the CMake package and amalloc.pc.
#
#   find_package(amalloc) gives
#     amalloc::amalloc         libamalloc.so: replaces malloc and operator new
#     amalloc::amalloc_static  libamalloc.a, linked whole so the overrides are
#                              always pulled in (see amalloc-config.cmake.in)
#     amalloc::core            libamalloc_core.a: the am_* API only
#   pkg-config amalloc gives the shared library; the static link line is the
#   static_libs variable (see amalloc.pc.in).
include(CMakePackageConfigHelpers)

set(AMALLOC_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/amalloc)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/amalloc
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "*.hpp")

set(_amalloc_install_targets)
if(TARGET amalloc)
  list(APPEND _amalloc_install_targets amalloc)
endif()
if(TARGET amalloc_static)
  # Exported under another name: the config file wraps it in the
  # whole-archive target amalloc::amalloc_static.
  set_target_properties(amalloc_static PROPERTIES EXPORT_NAME amalloc_static_archive)
  list(APPEND _amalloc_install_targets amalloc_static)
endif()
if(TARGET amalloc_core)
  set_target_properties(amalloc_core PROPERTIES EXPORT_NAME core)
  list(APPEND _amalloc_install_targets amalloc_core)
endif()

install(TARGETS ${_amalloc_install_targets}
        EXPORT amalloc-targets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT amalloc-targets NAMESPACE amalloc:: DESTINATION ${AMALLOC_CMAKE_DIR})

configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/amalloc-config.cmake.in
  ${PROJECT_BINARY_DIR}/amalloc-config.cmake INSTALL_DESTINATION ${AMALLOC_CMAKE_DIR})
# 0.x releases promise no compatibility between minor versions.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/amalloc-config-version.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/amalloc-config.cmake
              ${PROJECT_BINARY_DIR}/amalloc-config-version.cmake
        DESTINATION ${AMALLOC_CMAKE_DIR})

# amalloc.pc finds its prefix from its own location (${pcfiledir}), so the
# tree can be installed anywhere (cmake --install --prefix, DESTDIR, a copy).
set(_amalloc_pc_dir ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(AMALLOC_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _amalloc_up "/prefix/${_amalloc_pc_dir}" "/prefix")
  string(REGEX REPLACE "/$" "" _amalloc_up "${_amalloc_up}")
  set(AMALLOC_PC_PREFIX "\${pcfiledir}/${_amalloc_up}")
endif()
foreach(_dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_dir}}")
    set(AMALLOC_PC_${_dir} "${CMAKE_INSTALL_${_dir}}")
  else()
    set(AMALLOC_PC_${_dir} "\${prefix}/${CMAKE_INSTALL_${_dir}}")
  endif()
endforeach()
configure_file(${CMAKE_CURRENT_LIST_DIR}/amalloc.pc.in ${PROJECT_BINARY_DIR}/amalloc.pc @ONLY)
if(TARGET amalloc)
  install(FILES ${PROJECT_BINARY_DIR}/amalloc.pc DESTINATION ${_amalloc_pc_dir})
endif()
