"""The docs' block extractor (tests/helpers_docs.py): what tests/e2e/test_docs_commands.py runs."""

from __future__ import annotations

import pytest

from helpers_docs import fenced_blocks, runnable_blocks

PAGE = """\
# Title

```bash
python run.py --help
```

```bash run
python run.py mode=plan
python run.py trainer.epochs=1
```

```yaml
trainer:
  epochs: 1
```

````markdown
```bash run
echo shown inside an example, not run
```
````

1. In a list:

   ```bash run
   python run.py mode=export
   ```

~~~bash run
echo tilde
~~~
```bash runnable
echo not exactly `bash run`
```
"""


def test_only_bash_run_blocks_are_found_with_their_lines():
    blocks = runnable_blocks(PAGE, "page.md")
    assert [(b.page, b.line) for b in blocks] == [("page.md", 7), ("page.md", 25), ("page.md", 29)]
    assert blocks[0].text == "python run.py mode=plan\npython run.py trainer.epochs=1\n"
    assert blocks[1].text == "python run.py mode=export\n"  # the list item's indentation is removed
    assert blocks[2].text == "echo tilde\n"


def test_other_info_strings_are_kept_apart():
    infos = [info for info, _ in fenced_blocks(PAGE)]
    assert infos == ["bash", "bash run", "yaml", "markdown", "bash run", "bash run", "bash runnable"]


def test_an_unterminated_fence_is_an_error():
    with pytest.raises(ValueError, match=r"page\.md:3: .*never closed"):
        runnable_blocks("text\n\n```bash run\npython run.py\n", "page.md")


def test_a_shorter_fence_does_not_close_a_longer_one():
    with pytest.raises(ValueError, match="never closed"):
        runnable_blocks("````bash run\necho hi\n```\n", "page.md")


def test_a_page_without_runnable_blocks_gives_none():
    assert runnable_blocks("# Nothing to run\n\n```bash\nls\n```\n") == []
