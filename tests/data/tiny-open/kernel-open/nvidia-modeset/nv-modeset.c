// SPDX-License-Identifier: MIT
// Uses a symbol of nvidia.ko, so depmod records a dependency between them.
#include <linux/module.h>
#include <linux/init.h>
#include "nv-tiny.h"

static int __init nv_modeset_tiny_init(void)
{
	return nv_tiny_core_value() ? 0 : -ENODEV;
}

static void __exit nv_modeset_tiny_exit(void)
{
}

module_init(nv_modeset_tiny_init);
module_exit(nv_modeset_tiny_exit);
MODULE_LICENSE("Dual MIT/GPL");
MODULE_VERSION(NV_VERSION_STRING);
