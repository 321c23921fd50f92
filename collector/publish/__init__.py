"""Publishing: the vault's IDs files and day reports uploaded to OSF (`osf`)."""
