"""What a conversion skipped, dropped or fixed, with the file and field, and the end-of-run summary."""

import collections
import dataclasses
import json

REPORT_JSON = "conversion_report.json"
REPORT_TEXT = "conversion_report.txt"

# Actions, from the most to the least severe.
SKIPPED_IMAGE = "skipped image"  # the whole image is left out
DROPPED_OBJECT = "dropped object"  # the image is kept without this object
CLIPPED_BOX = "clipped box"  # the box is kept, clipped to the image
FIXED = "fixed"  # a field was corrected (size from the image, colour mode, orientation, flag values)
WARNING = "warning"  # nothing changed, but worth knowing
ACTIONS = (SKIPPED_IMAGE, DROPPED_OBJECT, CLIPPED_BOX, FIXED, WARNING)


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str
    field: str
    action: str
    reason: str  # short, groupable: 'missing image', 'zero-area box', ...
    message: str

    def line(self):
        return f"{self.action}: {self.file} [{self.field}] {self.reason}: {self.message}"


def count_by_action_and_reason(problems):
    counts = collections.OrderedDict((action, collections.Counter()) for action in ACTIONS)
    for problem in problems:
        counts[problem.action][problem.reason] += 1
    return {action: dict(sorted(reasons.items())) for action, reasons in counts.items() if reasons}


def summary_lines(info, problems):
    """The human summary printed at the end of a run and saved as conversion_report.txt."""
    lines = [f"dataset '{info['name']}': {info['num_images']} images, {info['num_objects']} objects, "
             f"{info['num_classes'] - 1} classes"]
    for split, split_info in info["splits"].items():
        per_class = ", ".join(f"{name}: {count}" for name, count in split_info["objects_per_class"].items())
        lines.append(
            f"  {split}: {split_info['num_images']} images in {split_info['num_shards']} shards, "
            f"{split_info['num_objects']} objects ({per_class}), "
            f"{split_info['images_without_objects']} images without objects"
        )
    counts = count_by_action_and_reason(problems)
    if not counts:
        lines.append("nothing skipped, dropped or fixed")
    for action, reasons in counts.items():
        detail = ", ".join(f"{reason}: {count}" for reason, count in reasons.items())
        lines.append(f"  {action}: {sum(reasons.values())} ({detail})")
    return lines


def write_report(json_path, text_path, info, problems):
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "summary": count_by_action_and_reason(problems),
                "problems": [dataclasses.asdict(problem) for problem in problems],
            },
            f,
            indent=1,
        )
    with open(text_path, "w", encoding="utf-8") as f:
        f.write("\n".join(summary_lines(info, problems) + ["", "details:"] + [p.line() for p in problems]) + "\n")
