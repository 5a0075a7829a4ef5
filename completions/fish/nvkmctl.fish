# fish completion for nvkmctl.  Kernel releases come from the module
# directories (what nvkmd sees).

function __nvkmctl_kernels
    for d in /lib/modules/*/ /usr/lib/modules/*/
        basename $d
    end | sort -u
end

set -l commands status kernels jobs build cancel logs cleanup rescan next-boot boot preflight wait-ready source fix
set -l source_actions status init update sync

complete -c nvkmctl -f
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -l bus -x -a 'system session' -d 'the D-Bus nvkmd is on'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -l root -x -a '(__fish_complete_directories)' -d 'root of the system'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -l version -d 'print the version'

complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a status -d 'the daemon, the driver source, every kernel and the jobs'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a kernels -d 'every installed kernel and its module'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a jobs -d 'queued, running and recently finished builds'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a build -d 'queue builds (privileged)'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a cancel -d 'cancel a queued or running build (privileged)'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a logs -d 'show or follow a build log'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a cleanup -d 'remove modules of old kernels; a dry run unless --execute'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a rescan -d 'look at kernels and driver sources again now (privileged)'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a next-boot -d 'will the next boot have a ready NVIDIA module'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a boot -d 'boot try KERNEL, boot guard off|warn|pin|config (privileged)'
complete -c nvkmctl -n '__fish_seen_subcommand_from boot' -x -a 'try guard off warn pin config'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a preflight -d 'would the driver build for a kernel not installed yet (privileged)'
complete -c nvkmctl -n '__fish_seen_subcommand_from preflight' -s t -l timeout -x -d 'give up waiting after S seconds'
complete -c nvkmctl -n '__fish_seen_subcommand_from preflight' -F -d 'kernel package, release, package file or headers directory'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a wait-ready -d 'wait until the running kernel has its NVIDIA module'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a source -d 'the driver source: status, init, update, sync'
complete -c nvkmctl -n "not __fish_seen_subcommand_from $commands" -a fix -d 'tidy, rebuild what is missing, run depmod where stale'

complete -c nvkmctl -n "__fish_seen_subcommand_from $commands" -l json -d 'print JSON instead of text'

complete -c nvkmctl -n '__fish_seen_subcommand_from jobs' -s n -l finished -x -d 'the N most recently finished'
complete -c nvkmctl -n '__fish_seen_subcommand_from build' -s k -l kernel -x -a '(__nvkmctl_kernels)' -d 'only this kernel release'
complete -c nvkmctl -n '__fish_seen_subcommand_from build' -s f -l force -d 'rebuild even if current'
complete -c nvkmctl -n '__fish_seen_subcommand_from build' -s w -l wait -d 'wait, with a progress bar'
complete -c nvkmctl -n '__fish_seen_subcommand_from logs' -s k -l kernel -x -a '(__nvkmctl_kernels)' -d 'the latest log of this kernel'
complete -c nvkmctl -n '__fish_seen_subcommand_from logs' -s j -l job -x -d 'the log of this job'
complete -c nvkmctl -n '__fish_seen_subcommand_from logs' -s t -l tail -x -d 'the last N lines'
complete -c nvkmctl -n '__fish_seen_subcommand_from logs' -s f -l follow -d 'follow until the build ends'
complete -c nvkmctl -n '__fish_seen_subcommand_from cleanup' -l keep -x -d 'keep the N most recent kernels'
complete -c nvkmctl -n '__fish_seen_subcommand_from cleanup' -l execute -d 'really remove'
complete -c nvkmctl -n '__fish_seen_subcommand_from wait-ready' -s k -l kernel -x -a '(__nvkmctl_kernels)' -d 'the kernel release to check'
complete -c nvkmctl -n '__fish_seen_subcommand_from wait-ready' -s t -l timeout -x -d 'give up after S seconds'
complete -c nvkmctl -n '__fish_seen_subcommand_from fix' -l config -r -F -d 'configuration file'
complete -c nvkmctl -n '__fish_seen_subcommand_from fix' -l dry-run -d 'only say what would be done'

complete -c nvkmctl -n "__fish_seen_subcommand_from source; and not __fish_seen_subcommand_from $source_actions" -l config -r -F -d 'configuration file'
complete -c nvkmctl -n "__fish_seen_subcommand_from source; and not __fish_seen_subcommand_from $source_actions" -a status -d 'path, kind, tags, version'
complete -c nvkmctl -n "__fish_seen_subcommand_from source; and not __fish_seen_subcommand_from $source_actions" -a init -d 'set up a clone as the source'
complete -c nvkmctl -n "__fish_seen_subcommand_from source; and not __fish_seen_subcommand_from $source_actions" -a update -d 'newest tag, then rebuild'
complete -c nvkmctl -n "__fish_seen_subcommand_from source; and not __fish_seen_subcommand_from $source_actions" -a sync -d 'rebuild from the current checkout'
complete -c nvkmctl -n '__fish_seen_subcommand_from source; and __fish_seen_subcommand_from init' -l dkms -d 'register with DKMS'
complete -c nvkmctl -n '__fish_seen_subcommand_from source; and __fish_seen_subcommand_from init' -l exclude -x -d 'leave MODULE out of dkms.conf'
complete -c nvkmctl -n '__fish_seen_subcommand_from source; and __fish_seen_subcommand_from init' -a '(__fish_complete_directories)'
complete -c nvkmctl -n '__fish_seen_subcommand_from source; and __fish_seen_subcommand_from update' -l no-build -d 'update without queueing builds'
complete -c nvkmctl -n '__fish_seen_subcommand_from source; and __fish_seen_subcommand_from sync' -s k -l kernel -x -a '(__nvkmctl_kernels)' -d 'only this kernel release'
complete -c nvkmctl -n '__fish_seen_subcommand_from source; and __fish_seen_subcommand_from sync' -s f -l force -d 'rebuild even if current'
