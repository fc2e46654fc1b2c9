# Placeholder: the record's train_gpt.py is not copied (code from another repository); see ../SOURCE.md.
