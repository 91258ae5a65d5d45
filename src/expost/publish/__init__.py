"""Publishing: the gist and forum bundle, the manifest, the secret scan and the gist API."""
