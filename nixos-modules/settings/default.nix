# The tables of the agent's configuration file, one file each, declared with
# mkSection (../sections.nix). A new table of the agent is a new file here and
# its line in this list; the order does not matter.
[
  ./agent.nix
  ./watch-units.nix
  ./watch-disks.nix
  ./watch-disks-clean.nix
  ./incidents.nix
  ./runbooks-service-restart.nix
  ./runbooks-free-disk.nix
  ./limits.nix
  ./remediation.nix
  ./metrics.nix
  ./evidence.nix
  ./evidence-s3.nix
]
