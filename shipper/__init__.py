"""shipper: a log-shipping agent for Node.js APIs on Supabase."""

__version__ = "0.1.0"
