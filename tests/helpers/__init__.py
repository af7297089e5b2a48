"""Test helpers shared by the test folders: real daemons, peers and trees."""
