#ifndef NV_TINY_H
#define NV_TINY_H
#include "headers.h"
int nv_tiny_core_value(void);
#endif
