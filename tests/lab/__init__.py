"""The lab: Debian 12 and 13 hosts (systemd-nspawn) running the fleet against the test doubles."""
