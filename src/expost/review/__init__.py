"""Review: what a change did to a post (`expost diff`). Reads bundles that the publish stage wrote
(one committed at a git revision, one rendered from the working tree) and compares them."""
