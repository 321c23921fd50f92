"""The lab: real Debian 12 hosts (systemd-nspawn) running the fleet against the test doubles."""
