// SPDX-License-Identifier: MIT
#include <linux/module.h>
#include <linux/init.h>
#include "nv-tiny.h"

static int __init nv_tiny_init(void)
{
	pr_info("nvidia (tiny) %s: %d\n", NV_VERSION_STRING, nv_tiny_core_value());
	return 0;
}

static void __exit nv_tiny_exit(void)
{
}

module_init(nv_tiny_init);
module_exit(nv_tiny_exit);
MODULE_LICENSE("Dual MIT/GPL");
MODULE_VERSION(NV_VERSION_STRING);
MODULE_DESCRIPTION("nvkmd test module laid out like NVIDIA's kernel-open/nvidia");
