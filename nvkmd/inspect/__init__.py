"""Reading the system's deeper state: the boot loader's next kernel, who put a module
there, whether module, user space and firmware agree, Secure Boot."""
