"""Ray's workarounds, named as such: local Ray on loopback, resource checks, reaper, rendezvous, log noise."""
