"""The ResUNet++ network and its checkpoint format."""
