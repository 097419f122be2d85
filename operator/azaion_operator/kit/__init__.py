"""What every resource kind's controller shares: conditions, the API client, names, object metadata."""
