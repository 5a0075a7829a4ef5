count:
	@echo "conftests:$(words $(ALL_CONFTESTS))" \
		  "objects:$(words $(NV_OBJECTS_DEPEND_ON_CONFTEST))" \
		  "modules:$(words $(NV_KERNEL_MODULES))"

.PHONY: count

include Makefile
src := $(CURDIR)
$(foreach _module, $(NV_KERNEL_MODULES), $(eval include $(_module)/$(_module).Kbuild))
ALL_CONFTESTS := $(sort $(NV_CONFTEST_FUNCTION_COMPILE_TESTS))
