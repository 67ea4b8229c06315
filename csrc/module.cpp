// The Python module fastseg._C. Importing it loads this library, whose static initialisers register
// the ops (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL); it also tells Python what was built.
#include <Python.h>

#ifndef FASTSEG_CUDA_ARCH_LIST
#define FASTSEG_CUDA_ARCH_LIST ""
#endif
#ifndef FASTSEG_CUDA_VERSION
#define FASTSEG_CUDA_VERSION ""
#endif

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastseg's C++/CUDA ops", -1,
                                          nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef FASTSEG_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cuda_arch_list", FASTSEG_CUDA_ARCH_LIST);
  PyModule_AddStringConstant(m, "cuda_version", FASTSEG_CUDA_VERSION);
  return m;
}
