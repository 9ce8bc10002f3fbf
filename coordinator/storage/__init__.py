"""The storage fence (`[fence] storage`): none, or SCSI-3 persistent
reservations (coordinator.storage.scsi_pr); see doc/design.md, "The
storage fence"."""
