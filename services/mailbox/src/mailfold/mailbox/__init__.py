"""mailfold mailbox: IMAP and POP3 sync of integrated mailboxes into email events."""
