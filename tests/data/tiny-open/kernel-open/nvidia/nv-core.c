// SPDX-License-Identifier: MIT
#include <linux/module.h>
#include "nv-tiny.h"

int nv_tiny_core_value(void)
{
#ifdef NV_CONFTEST_module_h
	return 1;
#else
	return 0;
#endif
}
EXPORT_SYMBOL(nv_tiny_core_value);
